"""Unit tests: celeryd-admin check's lines and exit codes, without a broker."""

import socket

import pytest

from celeryd_pkg import account
from celeryd_pkg.admin import check
from tests.unit.admin.conftest import SECRET, run


def test_result_lines_have_the_documented_shape():
    assert check.Result("OK", "dns", "h -> 1.2.3.4").line() == "OK   dns: h -> 1.2.3.4"
    assert check.Result("FAIL", "tcp", "refused", "start it", 4).line() == \
        "FAIL tcp: refused — start it"
    assert check.Result("SKIP", "login", "not checked").line() == "SKIP login: not checked"


def test_check_with_an_invalid_config_fails_config_exit_3_and_skips_the_rest(
        capsys, etc):
    main, _ = etc
    main.write_text("broker:\n  port: many\n")
    code, out, err = run(capsys, "check", "--config", str(main))
    lines = out.splitlines()
    assert code == 3 and err == ""
    assert lines[0].startswith("FAIL config: ") and "broker.port" in lines[0]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["SKIP", f"{name}:"] for name in check.STEPS[1:]]


def test_check_with_an_unresolvable_host_fails_dns_exit_4(capsys, etc, monkeypatch):
    main, creds = etc
    account.save(creds, {"host": "broker.invalid", "password": SECRET}, 0)

    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    code, out, err = run(capsys, "check", "--config", str(main))
    lines = out.splitlines()
    assert code == 4 and SECRET not in out + err
    assert lines[0].startswith("OK   config: broker amqp://celery:***@broker.invalid:5672/")
    assert lines[1] == ("OK   outbound: tasks may reach: localhost, the broker (broker.invalid), "
                        "and: nothing else (set worker.outbound to allow more)")
    assert lines[2].startswith("FAIL dns: cannot resolve broker host 'broker.invalid'")
    assert all(line.startswith("SKIP") for line in lines[3:]) and len(lines) == 7


def test_check_with_nothing_listening_fails_tcp_exit_4(capsys, etc):
    main, creds = etc
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    account.save(creds, {"host": "127.0.0.1", "port": port, "password": SECRET}, 0)
    code, out, err = run(capsys, "check", "--config", str(main))
    lines = out.splitlines()
    assert code == 4 and SECRET not in out + err
    assert lines[2] == "OK   dns: 127.0.0.1 -> 127.0.0.1"
    assert lines[3].startswith(f"FAIL tcp: cannot connect to port {port} (127.0.0.1: ")
    assert "—" in lines[3]
    assert [line[:4] for line in lines[4:]] == ["SKIP"] * 3


def unresolvable(monkeypatch):
    """Stop check at the dns step: the lines before it are the config's."""
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)


@pytest.mark.parametrize("worker_yaml, reach", [
    ("outbound: [192.0.2.7, 10.0.0.0/8]",
     "localhost, the broker (broker.invalid), and: 10.0.0.0/8, 192.0.2.7"),
    ("outbound: [10.0.0.0/8, any]", None),
], ids=["list", "any"])
def test_check_says_what_tasks_may_reach_from_worker_outbound(
        capsys, etc, monkeypatch, worker_yaml, reach):
    main, creds = etc
    account.save(creds, {"host": "broker.invalid", "password": SECRET}, 0)
    main.write_text("worker:\n  " + worker_yaml + "\n")
    unresolvable(monkeypatch)

    code, out, err = run(capsys, "check", "--config", str(main))

    lines = out.splitlines()
    assert (code, err) == (4, "")
    expected = reach or "any address (worker.outbound: [any])"
    assert lines[1] == f"OK   outbound: tasks may reach: {expected}"
    assert lines[2].startswith("FAIL dns: ")  # no memory line when no limit is set


def test_check_lists_the_memory_guardrails_that_are_set_after_the_outbound_line(
        capsys, etc, monkeypatch):
    main, creds = etc
    account.save(creds, {"host": "broker.invalid", "password": SECRET}, 0)
    main.write_text("worker:\n  memory_high: 1G\n  memory_max: 80%\n"
                    "  max_memory_per_child: 204800\n")
    unresolvable(monkeypatch)

    code, out, err = run(capsys, "check", "--config", str(main))

    lines = out.splitlines()
    assert (code, err) == (4, "")
    assert lines[1].startswith("OK   outbound: tasks may reach: localhost, the broker ")
    assert lines[2] == ("OK   memory: throttled above 1G (worker.memory_high); the largest child "
                        "killed above 80% (worker.memory_max); a child above 204800 KiB replaced "
                        "once its task ends (worker.max_memory_per_child)")
    assert lines[3].startswith("FAIL dns: ")
    assert [line.split()[:2] for line in lines[4:]] == [
        ["SKIP", f"{name}:"] for name in check.STEPS[3:]]
