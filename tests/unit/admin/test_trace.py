"""Unit tests: celeryd-admin trace, its arguments, the journalctl command line, reading
journalctl's JSON and what is printed. A fake journalctl (a shell script printing canned lines)
tests argument handling and parsing only; the real journal is tested in tests/system."""

import json
import time

import pytest

from celeryd_pkg.admin import cli, trace
from celeryd_pkg.errors import UsageError
from tests.unit.admin.conftest import run

UUID = "3f1c2b9e-7a41-4c8e-9d3f-5b6a7c8d9e0f"
OTHER = "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
AT = 1796069703123456  # 2026-11-30 20:15:03.123456 UTC, in microseconds
TRACEBACK = ("Task tasks.add[%s] raised unexpected: ZeroDivisionError('division by zero')\n"
             "Traceback (most recent call last):\n"
             "  File \"/srv/app/tasks.py\", line 9, in add\n"
             "ZeroDivisionError: division by zero\n" % UUID)


def journal_line(task_id, state, message, at=AT, host="web1",
                 unit="celery-worker.service", pid="4242", **extra):
    """One line of `journalctl -o json`, with the fields celeryd_pkg.journal and journald set."""
    entry = {"__CURSOR": "s=1;i=2", "__REALTIME_TIMESTAMP": str(at),
             "__MONOTONIC_TIMESTAMP": "123", "_BOOT_ID": "b" * 32, "PRIORITY": "6",
             "SYSLOG_IDENTIFIER": "celery-worker", "LOGGER": "celery.app.trace",
             "PROCESS_NAME": "ForkPoolWorker-1", "CELERY_TASK_ID": task_id,
             "CELERY_TASK_NAME": "tasks.add", "CELERY_TASK_STATE": state, "_HOSTNAME": host,
             "_SYSTEMD_UNIT": unit, "_PID": pid, "_TRANSPORT": "journal", "MESSAGE": message}
    entry.update(extra)
    return json.dumps({key: value for key, value in entry.items() if value is not None})


CANNED = [
    journal_line(UUID, "RECEIVED", f"Task tasks.add[{UUID}] received", pid="4240",
                 PROCESS_NAME="MainProcess", LOGGER="celery.worker.strategy"),
    journal_line(UUID, "STARTED", list("caf\xe9 ".encode("latin-1") + b"\x1b[31m"),
                 at=AT + 1500, LOGGER="tasks"),
    journal_line(UUID, "FAILURE", TRACEBACK, at=AT + 2_000_000),
]


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Local time is UTC unless a test says otherwise."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def journalctl(tmp_path, monkeypatch):
    """A fake journalctl, alone on PATH: it records its arguments and prints the lines of
    .lines (set them in the test), exiting with .status after printing .error on stderr."""

    class Fake:
        lines = CANNED
        status = 0
        error = ""
        directory = tmp_path / "bin"

        def install(self):
            (self.directory / "out").write_text("".join(line + "\n" for line in self.lines))
            (self.directory / "err").write_text(self.error)
            script = self.directory / "journalctl"
            script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {self.args_file}\n"
                              f"/bin/cat {self.directory}/out\n"
                              f"/bin/cat {self.directory}/err >&2\nexit {self.status}\n")
            script.chmod(0o755)

        @property
        def args_file(self):
            return self.directory / "args"

        def argv(self):
            return self.args_file.read_text().splitlines()

    fake = Fake()
    fake.directory.mkdir()
    monkeypatch.setenv("PATH", str(fake.directory))
    monkeypatch.setattr(trace.socket, "gethostname", lambda: "web1")
    return fake


@pytest.mark.parametrize("task_id", [UUID, "a", "host:1.task_2-x", "A" * 255])
def test_good_ids_pass(task_id):
    args = cli.parse_args(["trace", task_id])
    assert (args.command, args.ids, args.json) == ("trace", [task_id], False)
    assert args.command_spec.action is trace.action_trace


@pytest.mark.parametrize("argv", [["trace"], ["trace", "a=b"], ["trace", "+"], ["trace", ""],
                                  ["trace", "A" * 256], ["trace", UUID, "x y"],
                                  ["trace", "ab\n"], ["trace", ".hidden"],
                                  ["trace", UUID, "--config", "/etc/celeryd/celeryd.yaml"]])
def test_bad_ids_exit_2_with_one_line_before_running_anything(capsys, journalctl, argv):
    journalctl.install()
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("celeryd-admin: ") and err.count("\n") == 1
    assert not journalctl.args_file.exists()


def test_a_bad_id_is_named_even_when_long():
    with pytest.raises(UsageError, match=r"bad task id 'a=b'"):
        trace.validate_id("a=b")
    with pytest.raises(UsageError) as raised:
        trace.validate_id("x" * 300)
    assert "x" * 60 + "..." in raised.value.message and "\n" not in raised.value.message


def test_argv_matches_every_id_on_one_field():
    argv = trace.journalctl_argv("/usr/bin/journalctl", [UUID, OTHER])
    assert argv[0] == "/usr/bin/journalctl"
    assert {"--merge", "--output=json", "--no-pager", "--all"} <= set(argv)
    assert argv[-2:] == [f"CELERY_TASK_ID={UUID}", f"CELERY_TASK_ID={OTHER}"]


def test_parses_real_looking_lines_with_byte_list_and_multi_line_messages():
    output = ("\n".join(reversed(CANNED)) + "\n-- No entries --\n").encode()
    entries = trace.parse_entries(output)
    assert [entry["state"] for entry in entries] == ["RECEIVED", "STARTED", "FAILURE"]
    received, started, failed = entries
    assert received == {"id": UUID, "name": "tasks.add", "state": "RECEIVED", "timestamp": AT,
                        "host": "web1", "unit": "celery-worker.service",
                        "identifier": "celery-worker", "pid": 4240,
                        "message": f"Task tasks.add[{UUID}] received"}
    assert started["message"] == "caf\ufffd \x1b[31m"
    assert failed["message"] == TRACEBACK.rstrip("\n")


def test_fields_given_several_times_or_null_or_absent():
    line = journal_line(UUID, "SUCCESS", None, unit=None, pid=None, host=None,
                        CELERY_TASK_NAME=["tasks.add", "other"],
                        CELERY_TASK_STATE=[[83, 85, 67, 67, 69, 83, 83], "x"])
    entry = trace.parse_entries(line.encode())[0]
    assert (entry["name"], entry["state"], entry["pid"], entry["host"], entry["unit"]) == (
        "tasks.add", "SUCCESS", None, None, None)
    assert entry["message"] == "(no message)"
    assert trace.format_entry(entry) == ("2026-11-30 20:15:03.123456 - celery-worker SUCCESS "
                                         "(no message)")


def test_text_line_in_local_time_with_continuation_lines(monkeypatch):
    started, failed = trace.parse_entries("\n".join(CANNED[1:]).encode())
    assert trace.format_entry(started) == (
        "2026-11-30 20:15:03.124956 web1 celery-worker[4242] STARTED caf\ufffd \\x1b[31m")
    monkeypatch.setenv("TZ", "XST-2")  # two hours east of UTC
    time.tzset()
    assert trace.format_entry(failed).splitlines() == [
        f"2026-11-30 22:15:05.123456 web1 celery-worker[4242] FAILURE Task tasks.add[{UUID}] "
        f"raised unexpected: ZeroDivisionError('division by zero')",
        "    Traceback (most recent call last):",
        "      File \"/srv/app/tasks.py\", line 9, in add",
        "    ZeroDivisionError: division by zero"]


def test_an_instance_unit_loses_only_its_service_suffix():
    line = journal_line(UUID, "SUCCESS", "done", unit="celery-worker@reports.service")
    entry = trace.parse_entries(line.encode())[0]
    assert " celery-worker@reports[4242] SUCCESS done" in trace.format_entry(entry)


def test_json_entry_is_utc_with_microseconds():
    entry = trace.parse_entries(CANNED[0].encode())[0]
    assert trace.json_entry(entry) == {
        "id": UUID, "name": "tasks.add", "state": "RECEIVED",
        "time": "2026-11-30T20:15:03.123456+00:00", "host": "web1",
        "unit": "celery-worker.service", "pid": 4240,
        "message": f"Task tasks.add[{UUID}] received"}


def test_summary_names_this_host_and_the_hosts_the_entries_came_from():
    entries = trace.parse_entries("\n".join([*CANNED, journal_line(
        OTHER, "SUCCESS", "ok", host="web3", at=AT + 5)]).encode())
    line = trace.summary("collector", entries)
    assert line.startswith("celeryd-admin: trace read the journals on this host (collector)")
    assert "4 entries from web1, web3;" in line and "run celeryd-admin trace there" in line
    assert "1 entry from web1;" in trace.summary("web1", entries[:1])
    assert ": 0 entries;" in trace.summary("web1", [])


def test_misses_keep_the_order_given():
    entries = trace.parse_entries(CANNED[0].encode())
    assert trace.misses([OTHER, UUID, "zz"], entries) == [OTHER, "zz"]


@pytest.mark.parametrize("euid, gids, expected", [
    (0, [0], False), (1000, [1000, 4], False), (1000, [1000, 101], False),
    (1000, [1000, 27], True), (1000, [1000], True)])
def test_only_own_journal_when_neither_root_nor_in_a_journal_group(euid, gids, expected):
    assert trace.reads_only_own_journal(euid, gids, [4, 101]) is expected


def test_trace_prints_each_entry_in_time_order_then_the_summary(capsys, journalctl,
                                                               monkeypatch):
    journalctl.install()
    # Not root, in no journal group: nothing missed, so no word about it.
    monkeypatch.setattr(trace.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(trace, "_journal_gids", lambda: [-4])
    code, out, err = run(capsys, "trace", UUID)
    assert code == 0
    assert out.splitlines()[0] == (f"2026-11-30 20:15:03.123456 web1 celery-worker[4240] "
                                   f"RECEIVED Task tasks.add[{UUID}] received")
    assert len(out.splitlines()) == 2 + len(TRACEBACK.splitlines())
    assert err.splitlines() == [trace.summary("web1", trace.parse_entries(
        "\n".join(CANNED).encode()))]
    assert journalctl.argv() == ["--merge", "--output=json", "--all", "--no-pager",
                                 f"CELERY_TASK_ID={UUID}"]


def test_json_prints_one_document(capsys, journalctl):
    journalctl.install()
    code, out, err = run(capsys, "trace", "--json", UUID)
    assert code == 0
    document = json.loads(out)
    assert [entry["state"] for entry in document] == ["RECEIVED", "STARTED", "FAILURE"]
    assert set(document[0]) == {"id", "name", "state", "time", "host", "unit", "pid", "message"}
    assert document[2]["message"].splitlines()[1] == "Traceback (most recent call last):"
    assert "3 entries from web1" in err


def test_an_id_without_entry_exits_1_with_a_line_for_it(capsys, journalctl, monkeypatch):
    journalctl.install()
    monkeypatch.setattr(trace.os, "geteuid", lambda: 0)
    code, out, err = run(capsys, "trace", UUID, OTHER, UUID)
    assert code == 1 and out.count("\n") == 2 + len(TRACEBACK.splitlines())
    assert journalctl.argv()[-2:] == [f"CELERY_TASK_ID={UUID}", f"CELERY_TASK_ID={OTHER}"]
    assert err.splitlines()[1:] == [
        f"celeryd-admin: no journal entry for task {OTHER} on this host"]


def test_a_user_outside_the_journal_groups_is_told_why(capsys, journalctl, monkeypatch):
    journalctl.lines = []
    journalctl.install()
    monkeypatch.setattr(trace.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(trace, "_journal_gids", lambda: [-4])
    code, out, err = run(capsys, "trace", "--json", UUID)
    assert (code, json.loads(out)) == (1, [])
    lines = err.splitlines()
    assert ": 0 entries;" in lines[0] and UUID in lines[1] and len(lines) == 3
    assert "only your own journal was readable" in lines[2] and "systemd-journal" in lines[2]


def test_journalctl_failing_exits_1_with_its_first_error_line(capsys, journalctl):
    journalctl.lines, journalctl.status = [], 1
    journalctl.error = "Failed to open journal: Permission denied\nsecond line\n"
    journalctl.install()
    code, out, err = run(capsys, "trace", UUID)
    assert (code, out) == (1, "")
    assert err == ("celeryd-admin: trace: journalctl failed: Failed to open journal: "
                   "Permission denied\n")


@pytest.mark.parametrize("gone_after_lookup", [False, True])
def test_no_journalctl_exits_3(capsys, tmp_path, monkeypatch, gone_after_lookup):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    if gone_after_lookup:  # removed between the lookup and the run
        monkeypatch.setattr(trace.shutil, "which", lambda name: str(empty / name))
    code, out, err = run(capsys, "trace", UUID)
    assert (code, out) == (3, "")
    assert err == "celeryd-admin: journalctl not found: trace reads systemd's journal\n"


def test_a_line_that_is_not_json_is_one_error_line(capsys, journalctl):
    journalctl.lines = ['{"MESSAGE": "cut sh']
    journalctl.install()
    code, out, err = run(capsys, "trace", UUID)
    assert (code, out) == (1, "") and err.count("\n") == 1 and "not JSON" in err

