"""Unit tests: celeryd-admin check's lines and exit codes, without a broker."""

import socket

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
    assert lines[1].startswith("FAIL dns: cannot resolve broker host 'broker.invalid'")
    assert all(line.startswith("SKIP") for line in lines[2:]) and len(lines) == 6


def test_check_with_nothing_listening_fails_tcp_exit_4(capsys, etc):
    main, creds = etc
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    account.save(creds, {"host": "127.0.0.1", "port": port, "password": SECRET}, 0)
    code, out, err = run(capsys, "check", "--config", str(main))
    lines = out.splitlines()
    assert code == 4 and SECRET not in out + err
    assert lines[1] == "OK   dns: 127.0.0.1 -> 127.0.0.1"
    assert lines[2].startswith(f"FAIL tcp: cannot connect to port {port} (127.0.0.1: ")
    assert "—" in lines[2]
    assert [line[:4] for line in lines[3:]] == ["SKIP"] * 3
