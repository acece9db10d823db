"""celery-submit --batch: every input line checked before any broker I/O, and parse_line."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from celeryd_pkg import batch, submit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_caller_config(monkeypatch):
    """The caller's CELERYD_* variables would override the config file."""
    for name in list(os.environ):
        if name.startswith("CELERYD_"):
            monkeypatch.delenv(name)


@pytest.fixture
def listener():
    """A port that accepts TCP but never speaks AMQP: a connect attempt leaves a connection
    in its backlog, so a test can prove none was made."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def write_config(directory, port):
    config = directory / "celeryd.yaml"
    config.write_text(f"broker:\n  host: 127.0.0.1\n  port: {port}\n  connect_timeout: 1\n"
                      f"  vhost: v\n  user: u\n")
    (directory / "credentials").write_text("broker:\n  password: unit-test-password\n")
    return config


@pytest.fixture
def config(tmp_path, listener):
    return write_config(tmp_path, listener.getsockname()[1])


def assert_never_connected(listener):
    with pytest.raises(BlockingIOError):
        listener.accept()[0].close()


def run_batch(capsys, config, path, *options):
    code = submit.main(["--batch", str(path), "--config", str(config), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


GOOD = '{"task": "add", "args": [1, 2]}\n["add", [3, 4]]\n'


@pytest.mark.parametrize("bad, fragment", [
    ('{"task": "add", "args": [1,', None),                    # invalid JSON
    ("4", None), ('"add"', None), ("null", None), ("true", None),  # neither object nor array
    ('{"args": [1, 2]}', "task"), ("[]", "task"),             # no task
    ('{"task": "a b"}', None), ('{"task": ".add"}', None), ('{"task": ""}', None),
    ('{"task": 4}', "task"), ("[4, [1]]", None), ('["add."]', None),
    ('{"task": "add", "args": 4}', "args"), ('{"task": "add", "args": {"x": 1}}', "args"),
    ('{"task": "add", "args": "1 2"}', "args"), ('["add", 4]', None), ('["add", "1 2"]', None),
    ('{"task": "add", "kwargs": [1]}', "kwargs"), ('{"task": "add", "kwargs": "x=1"}', "kwargs"),
    ('["add", [], [1]]', None),
    ('{"task": "add", "argz": [1]}', "argz"),                 # unknown key, named
    ('{"task": "add", "countdown": -1}', "countdown"), ('{"task": "add", "countdown": "soon"}', "countdown"),
    ('{"task": "add", "queue": ""}', "queue"), ('{"task": "add", "queue": 5}', "queue"),
    ('["add", [1], {}, 5]', None),                            # a fourth element
])
def test_a_bad_line_is_exit_2_naming_file_and_line_and_nothing_connects(
        capsys, tmp_path, config, listener, bad, fragment):
    path = tmp_path / "tasks.jsonl"
    path.write_text(GOOD + bad + "\n" + GOOD)
    code, out, err = run_batch(capsys, config, path)
    assert (code, out) == (2, "")
    assert err.startswith(f"celery-submit: {path} line 3: "), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if fragment:
        assert fragment in err.split(" line 3: ", 1)[1]
    assert_never_connected(listener)


def test_line_numbers_are_physical_blank_lines_count_but_are_skipped(capsys, tmp_path, config,
                                                                     listener):
    path = tmp_path / "tasks.jsonl"
    path.write_text('["add", [1, 1]]\n\n   \n\t\n["add", [2, 2]]\n{"task": "add", "x": 1}\n')
    code, out, err = run_batch(capsys, config, path)
    assert code == 2 and err.startswith(f"celery-submit: {path} line 6: ") and "'x'" in err
    assert_never_connected(listener)


def test_a_bad_line_after_many_good_ones_still_stops_everything(capsys, tmp_path, config, listener):
    path = tmp_path / "tasks.jsonl"
    path.write_text('["add", [1, 1]]\n' * 5000 + '{"task": "add", "countdown": -0.5}\n')
    code, _, err = run_batch(capsys, config, path)
    assert code == 2 and err.startswith(f"celery-submit: {path} line 5001: ")
    assert_never_connected(listener)


def test_invalid_utf8_is_exit_2_naming_its_line(capsys, tmp_path, config, listener):
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b'["add", [1, 1]]\n["echo", ["caf\xe9"]]\n')
    code, out, err = run_batch(capsys, config, path)
    assert (code, out) == (2, "")
    assert err.startswith(f"celery-submit: {path} line 2: ") and "Traceback" not in err
    assert_never_connected(listener)


def test_utf8_text_is_fine_and_passes_validation(capsys, tmp_path):
    # Nothing listens on this port: a file that validates goes on to connect, and fails so.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path, port)
    path = tmp_path / "tasks.jsonl"
    path.write_text('["echo", ["café ☕"]]\n{"task": "add", "args": [1, 2], "kwargs": {}, '
                    '"queue": "q", "countdown": 1.5}\n["celeryd.mul", [2, 3]]\n'
                    '["add", [], {"x": 1, "y": 2}]\n["myapp.tasks.resize"]\n'
                    '{"task": "add", "countdown": 0}\n', encoding="utf-8")
    code, out, err = run_batch(capsys, config, path, "--window", "1", "--no-wait", "--queue", "q2",
                               "--timeout", "5")
    assert (code, out) == (4, "")
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err


def test_a_file_that_does_not_exist_is_exit_2_naming_it(capsys, tmp_path, config, listener):
    path = tmp_path / "absent.jsonl"
    code, out, err = run_batch(capsys, config, path)
    assert (code, out) == (2, "") and str(path) in err and len(err.splitlines()) == 1
    assert_never_connected(listener)


@pytest.mark.parametrize("extra, named", [
    (["add"], "task"), (["add", "4", "4"], "task"), (["--kwarg", "x=1"], "--kwarg"),
    (["--countdown", "1"], "--countdown"), (["--json"], "--json"),
])
def test_batch_takes_no_task_kwarg_countdown_or_json(capsys, tmp_path, config, listener, extra,
                                                     named):
    path = tmp_path / "tasks.jsonl"
    path.write_text(GOOD)
    code, out, err = run_batch(capsys, config, path, *extra)
    assert (code, out) == (2, "")
    assert named.lower() in err.lower() and len(err.splitlines()) == 1
    assert_never_connected(listener)


@pytest.mark.parametrize("window", ["0", "-1", "x", "1.5"])
def test_window_must_be_a_whole_number_of_at_least_1(capsys, tmp_path, config, listener, window):
    path = tmp_path / "tasks.jsonl"
    path.write_text(GOOD)
    code, out, err = run_batch(capsys, config, path, "--window", window)
    assert (code, out) == (2, "") and "--window" in err
    assert_never_connected(listener)


def test_window_0_is_exit_2_without_batch_too(capsys, config):
    code = submit.main(["add", "1", "--window", "0", "--config", str(config)])
    assert code == 2 and "Traceback" not in capsys.readouterr().err


def test_a_task_is_still_required_without_batch(capsys, config, listener):
    assert submit.main(["--config", str(config)]) == 2
    assert "task" in capsys.readouterr().err.lower()
    assert_never_connected(listener)


def test_help_shows_batch_and_window():
    result = subprocess.run([sys.executable, "-m", "celeryd_pkg.submit", "--help"],
                            capture_output=True, text=True, cwd=REPO, timeout=30)
    assert result.returncode == 0 and "--batch" in result.stdout and "--window" in result.stdout


def test_stdin_is_named_stdin_in_errors(tmp_path, listener):
    config = write_config(tmp_path, listener.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYD_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "celeryd_pkg.submit", "--batch", "-", "--config", str(config)],
        input='["add", [1, 1]]\n\n{"task": "add", "args": 4}\n', capture_output=True, text=True,
        cwd="/", env=env, timeout=30)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("celery-submit: stdin line 3: ") and "args" in result.stderr
    assert_never_connected(listener)


# parse_line: one line of text to a Task, or ValueError with the reason.

@pytest.mark.parametrize("text, name, args, kwargs, queue, countdown", [
    ('{"task": "add", "args": [4, 4]}', "celeryd.add", [4, 4], {}, "dflt", None),
    ('{"task": "add", "args": [4, 4], "kwargs": {"z": 1}, "queue": "q", "countdown": 2.5}',
     "celeryd.add", [4, 4], {"z": 1}, "q", 2.5),
    ('{"task": "myapp.tasks.resize", "kwargs": {"size": 3}}', "myapp.tasks.resize", [], {"size": 3},
     "dflt", None),
    ('["add", [4, 4]]', "celeryd.add", [4, 4], {}, "dflt", None),
    ('["add"]', "celeryd.add", [], {}, "dflt", None),
    ('["xsum", [[1, 2]], {"x": 1}]', "celeryd.xsum", [[1, 2]], {"x": 1}, "dflt", None),
    ('  ["celeryd.echo", ["é"]]  ', "celeryd.echo", ["é"], {}, "dflt", None),
    ('{"task": "add", "countdown": 0}', "celeryd.add", [], {}, "dflt", 0),
])
def test_parse_line_resolves_names_and_fills_defaults(text, name, args, kwargs, queue, countdown):
    task = batch.parse_line(text, "dflt")
    assert isinstance(task, batch.Task) and batch.Task._fields == (
        "name", "args", "kwargs", "queue", "countdown")
    assert (task.name, list(task.args), task.kwargs, task.queue) == (name, args, kwargs, queue)
    if countdown:
        assert task.countdown == countdown
    else:
        assert not task.countdown  # absent or 0: no eta


@pytest.mark.parametrize("text, fragment", [
    ("{", None), ("[1, 2", None), ("7", None),
    ('{"task": "add", "bogus": 1}', "bogus"), ('{"task": "add", "args": 4}', "args"),
    ('{"task": "add", "kwargs": []}', "kwargs"), ('{"task": "add", "countdown": -1}', "countdown"),
    ('{"kwargs": {}}', "task"), ('["a b"]', None), ('{"task": "add", "queue": ""}', "queue"),
])
def test_parse_line_raises_value_error_with_the_reason(text, fragment):
    with pytest.raises(ValueError) as info:
        batch.parse_line(text, "dflt")
    reason = str(info.value)
    assert reason and "\n" not in reason
    if fragment:
        assert fragment in reason


def test_outcome_is_a_namedtuple_with_the_documented_fields():
    assert batch.Outcome._fields == ("index", "id", "state", "result", "error")
