"""Unit tests: celeryd-admin check's lines and exit codes, without a broker."""

import socket

import pytest

from celeryd_pkg import account
from celeryd_pkg.admin import check, outbound
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


STORE_SECRET = "st0re-Pa55"


def stored_results(etc, port, login=True):
    """A config with results.backend: redis at 127.0.0.1:port (this host's login if asked)."""
    main, creds = etc
    main.write_text("results:\n  backend: redis\n")
    account.save(creds, {"host": "127.0.0.1", "password": SECRET}, 0,
                 results={"user": "celery", "password": STORE_SECRET} if login else None)
    return main


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeRedis:
    """redis.Redis as _store uses it: ping() answers, or raises the error given."""

    error = None
    seen = []

    def __init__(self, **options):
        FakeRedis.seen.append(options)

    def ping(self):
        if FakeRedis.error is not None:
            raise FakeRedis.error
        return True

    def close(self):
        pass


class FakeConnection:
    """As broker.close() sees an amqp.Connection: connected (a transport), closable."""

    closed = False
    transport = object()

    def close(self):
        self.closed = True

    def collect(self):
        raise AssertionError("broker.close() frees a connection only when close() failed")


def broker_steps_ok(monkeypatch, connection):
    """dns, tcp, login and vhost pass without a broker; workers report one consumer."""
    monkeypatch.setattr(check, "_dns", lambda state: [check.Result("OK", "dns", "d")])
    monkeypatch.setattr(check, "_tcp", lambda state: [check.Result("OK", "tcp", "t")])

    def login(state):
        state["connection"] = connection
        return [check.Result("OK", "login", "l"), check.Result("OK", "vhost", "v")]

    monkeypatch.setattr(check, "_login", login)
    monkeypatch.setattr(check, "_workers", lambda state: [check.Result("OK", "workers", "w")])


@pytest.fixture
def fake_redis(monkeypatch):
    import redis

    FakeRedis.error, FakeRedis.seen = None, []
    monkeypatch.setattr(redis, "Redis", FakeRedis)
    return FakeRedis


def test_check_with_results_in_redis_logs_in_to_the_store_before_the_workers_step(
        capsys, etc, monkeypatch, fake_redis):
    main = stored_results(etc, 6379)
    broker_steps_ok(monkeypatch, FakeConnection())

    code, out, err = run(capsys, "check", "--config", str(main))

    lines = out.splitlines()
    assert (code, err) == (0, "")
    assert [line.split()[1] for line in lines] == [
        "config:", "outbound:", "dns:", "tcp:", "login:", "vhost:", "store:", "workers:"]
    assert lines[6] == "OK   store: logged in at redis://celery:***@127.0.0.1:6379/0"
    assert STORE_SECRET not in out
    (options,) = fake_redis.seen
    assert (options["username"], options["password"], options["port"]) == (
        "celery", STORE_SECRET, 6379)


def test_check_with_the_rpc_backend_has_no_store_line(capsys, etc, monkeypatch, fake_redis):
    main, creds = etc
    account.save(creds, {"host": "127.0.0.1", "password": SECRET}, 0)
    broker_steps_ok(monkeypatch, FakeConnection())

    code, out, _ = run(capsys, "check", "--config", str(main))

    assert code == 0 and "store" not in out and fake_redis.seen == []


def test_check_with_the_store_down_fails_store_exit_4_and_skips_the_workers(
        capsys, etc, monkeypatch):
    port = free_port()  # nothing listens: the real python3-redis gets ECONNREFUSED
    main = stored_results(etc, port)
    main.write_text(f"results:\n  backend: redis\n  port: {port}\n")
    connection = FakeConnection()
    broker_steps_ok(monkeypatch, connection)

    code, out, err = run(capsys, "check", "--config", str(main))

    lines = out.splitlines()
    assert (code, err) == (4, "")
    assert lines[6].startswith(f"FAIL store: cannot reach the result store at 127.0.0.1:{port} ")
    assert "redis://celery:***@" in lines[6] and STORE_SECRET not in out
    assert lines[7] == "SKIP workers: not checked after the failure above"
    assert len(lines) == 8 and connection.closed


@pytest.mark.parametrize("login", [True, False], ids=["wrong-password", "no-login-here"])
def test_check_with_the_store_refusing_the_login_fails_store_exit_5(
        capsys, etc, monkeypatch, fake_redis, login):
    import redis

    main = stored_results(etc, 6379, login)
    fake_redis.error = redis.exceptions.AuthenticationError(
        "WRONGPASS invalid username-password pair or user is disabled.")
    broker_steps_ok(monkeypatch, FakeConnection())

    code, out, _ = run(capsys, "check", "--config", str(main))

    line = out.splitlines()[6]
    assert code == 5
    assert line.startswith("FAIL store: the result store refused the login at redis://")
    assert ("celeryd-admin store-setup on the store host" in line) and STORE_SECRET not in out
    assert line.endswith("give this host its store login: celeryd-admin store-setup on the "
                         "store host") is not login


def test_check_with_an_invalid_config_skips_no_store_step_it_cannot_know_of(capsys, etc):
    main, _ = etc
    main.write_text("results:\n  backend: memcached\n")
    code, out, _ = run(capsys, "check", "--config", str(main))
    assert code == 3 and "results.backend" in out.splitlines()[0]
    assert "store" not in out


@pytest.mark.parametrize("config_yaml, units, shut_out", [
    ("results:\n  backend: redis\n  host: store.example\n", True, True),
    ("results:\n  backend: redis\n  host: store.example\nworker:\n  outbound: [192.0.2.0/24]\n",
     True, False),
    ("results:\n  backend: redis\n  host: store.example\nworker:\n  outbound: [any]\n", True,
     False),
    ("results:\n  backend: redis\n  host: store.example\n", False, False),
    ("results:\n  backend: rpc\n  host: store.example\n", True, False),
    ("results:\n  backend: redis\n  host: broker-by-another-name.example\n", True, False),
], ids=["not-allowed", "in-a-network", "any", "client-only-host", "rpc", "the-broker"])
def test_check_fails_when_the_worker_unit_may_not_reach_a_store_on_another_host(
        capsys, etc, monkeypatch, config_yaml, units, shut_out):
    main, creds = etc
    account.save(creds, {"host": "broker.invalid", "password": SECRET}, 0)
    main.write_text(config_yaml)
    unresolvable(monkeypatch)  # the dns step fails: check stops there
    resolved = {"store.example": {"192.0.2.9"}, "broker.invalid": {"198.51.100.1"},
                "broker-by-another-name.example": {"198.51.100.1"}}
    monkeypatch.setattr(outbound, "_addresses", lambda host: set(resolved.get(host, ())))
    monkeypatch.setattr(outbound, "worker_units_installed", lambda: units)

    code, out, err = run(capsys, "check", "--config", str(main))

    lines = out.splitlines()
    assert err == "" and lines[0].startswith("OK   config: ")
    if shut_out:
        assert code == 3
        assert lines[1] == (
            "FAIL outbound: the worker may not reach the result store store.example "
            "(192.0.2.9): not the broker, not in worker.outbound — add 192.0.2.9 to "
            "worker.outbound, then systemctl daemon-reload and restart celery-worker")
        assert all(line.startswith("SKIP") for line in lines[2:])
    else:
        assert code == 4 and lines[1].startswith("OK   outbound: ")
        assert lines[2].startswith("FAIL dns: ")


def test_installed_units_finds_the_worker_units_under_a_root(tmp_path):
    from celeryd_pkg.admin import join

    assert join.installed_units(tmp_path) == []
    (tmp_path / "lib/systemd/system").mkdir(parents=True)
    (tmp_path / "lib/systemd/system/celery-worker.service").write_text("")
    assert join.installed_units(tmp_path) == ["celery-worker.service"]


@pytest.mark.parametrize("store, allow, expected", [
    ("192.0.2.9", ["10.0.0.0/8"], ["192.0.2.9"]),
    ("192.0.2.9", ["192.0.2.9"], []),
    ("2001:db8::1", ["192.0.2.0/24"], ["2001:db8::1"]),
    ("2001:db8::1", ["2001:db8::/32"], []),
    ("127.0.0.2", [], []),
])
def test_store_shut_out_resolves_and_matches_addresses_and_networks(store, allow, expected):
    from types import SimpleNamespace

    settings = SimpleNamespace(results=SimpleNamespace(backend="redis", host=store),
                               broker=SimpleNamespace(host="127.0.0.1"),
                               worker=SimpleNamespace(outbound=allow))
    assert outbound.store_shut_out(settings) == expected
