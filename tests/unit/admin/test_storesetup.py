"""Unit tests: celeryd-admin store-setup's files, restarts and idempotence, with a fake
redis-server (what the real one does with them: tests/system/test_results.py)."""

import grp
import hashlib
import stat

import pytest

from celeryd_pkg import account, config
from celeryd_pkg.admin import store, storesetup
from celeryd_pkg.errors import AccessRefused, ConfigError
from tests.unit.admin.conftest import SECRET, STORE_GROUP as GROUP, run



def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def mode(path):
    info = path.stat()
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


class FakeClient:
    """A redis-py client as keep_existing_data uses it, with a server's persistence state."""

    def __init__(self, appendonly="no", keys=0, rewrites=2, status="ok"):
        self.appendonly, self.keys, self.rewrites, self.status = appendonly, keys, rewrites, status
        self.commands = []

    def config_get(self, name):
        return {name: self.appendonly}

    def config_set(self, name, value):
        self.commands.append(("config_set", name, value))
        self.appendonly = value

    def info(self, section):
        if section == "keyspace":
            return {"db0": {"keys": self.keys, "expires": 0}} if self.keys else {}
        busy = self.appendonly == "yes" and self.rewrites > 0
        self.rewrites -= busy
        return {"aof_rewrite_in_progress": int(busy), "aof_rewrite_scheduled": 0,
                "aof_last_bgrewrite_status": self.status}

    def close(self):
        self.commands.append(("close",))


class FakeServer:
    """redis-server as setup and remove drive it; login checks the ACL file as Redis would."""

    def __init__(self, layout, active=True, worker=False, client=None):
        self.layout, self.is_active, self.worker = layout, active, worker
        self.client, self.calls = client or FakeClient(), []

    def active(self):
        return self.is_active

    def worker_active(self):
        return self.worker

    def restart(self, unit=storesetup.UNIT):
        self.calls.append(f"restart {unit}")
        if unit == storesetup.UNIT:
            self.is_active = True
            # What it starts with must be in place already.
            self.started_with = {path: path.exists() for path in (
                self.layout.dropin, self.layout.aclfile, self.layout.credentials,
                self.layout.conf_d_file)}

    def daemon_reload(self):
        self.calls.append("daemon-reload")

    def login(self, user, password):
        self.calls.append(f"login {user}")
        if user != store.ADMIN:
            accounts = store.parse_aclfile(self.layout.aclfile.read_text())[0]
            if accounts.get(user, ("",))[0] != sha(password):
                raise AccessRefused(f"refused {user}")
        return self.client


def results_login(layout):
    return account.load_results(layout.credentials)


FIRST_RUN = ["login default", "daemon-reload", "restart redis-server", "login celery"]


def test_setup_makes_the_store_and_this_hosts_login_in_one_go(layout):
    server = FakeServer(layout)

    changes = storesetup.setup(layout, server, "celery", 0, (7, 0))

    assert server.calls == FIRST_RUN
    admin = store.read_admin_password(layout.admin_password)
    login = results_login(layout)
    assert login["user"] == "celery" and len(login["password"]) >= 40
    assert account.load(layout.credentials)["password"] == SECRET  # the broker's is kept
    acl = layout.aclfile.read_text()
    assert store.parse_aclfile(acl) == ({"celery": (sha(login["password"]), "worker")},
                                        sha(admin), [])
    assert login["password"] not in acl and admin not in acl
    assert mode(layout.aclfile) == (0o640, 0, grp.getgrnam(GROUP).gr_gid)
    assert mode(layout.admin_password)[:2] == (0o600, 0)
    assert layout.dropin.read_text() == store.render_dropin(None, layout.aclfile)
    assert f"--aclfile {layout.aclfile}" in layout.dropin.read_text()
    assert layout.conf_d_file.read_text() == storesetup.CONF_D_TEXT
    assert config.load(layout.credentials.parent / "celeryd.yaml").results.backend == "redis"
    assert changes == [f"wrote {layout.admin_password}", f"wrote {layout.aclfile}",
                       f"wrote {layout.dropin}", "restarted redis-server",
                       f"wrote the login of user 'celery' to {layout.credentials}",
                       f"wrote {layout.conf_d_file}"]
    # redis-server restarted with its files in place; the login went to the credentials file
    # only after it took it.
    assert server.started_with == {layout.dropin: True, layout.aclfile: True,
                                   layout.credentials: True, layout.conf_d_file: False}


def test_a_second_run_changes_nothing(layout):
    storesetup.setup(layout, FakeServer(layout), "celery", 0, (7, 0))
    paths = [layout.aclfile, layout.admin_password, layout.dropin, layout.credentials,
             layout.conf_d_file]
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in paths}
    server = FakeServer(layout, worker=True)

    assert storesetup.setup(layout, server, "celery", 0, (7, 0)) == []

    assert server.calls == []
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in paths} == before


def test_a_running_local_worker_is_restarted_once_its_config_names_the_store(layout):
    server = FakeServer(layout, worker=True)
    changes = storesetup.setup(layout, server, "celery", 0, (7, 0))
    assert server.calls == FIRST_RUN + ["restart celery-worker"]
    assert changes[-1] == "restarted celery-worker"


def test_without_a_credentials_file_the_login_is_written_alone(layout):
    layout.credentials.unlink()
    storesetup.setup(layout, FakeServer(layout), "celery", 0, (7, 0))
    loaded = config.load(layout.credentials.parent / "celeryd.yaml")
    assert (loaded.results.user, loaded.broker.password) == ("celery", None)


def test_a_login_redis_server_refuses_leaves_the_credentials_file_as_it_was(layout):
    before = layout.credentials.read_bytes()
    server = FakeServer(layout)
    server.login = lambda user, password: (_ for _ in ()).throw(AccessRefused("refused"))
    with pytest.raises(AccessRefused):
        storesetup.setup(layout, server, "celery", 0, (7, 0))
    assert layout.credentials.read_bytes() == before
    assert not layout.conf_d_file.exists()


def test_an_existing_login_is_kept_and_a_lost_acl_file_gets_it_back(layout):
    storesetup.setup(layout, FakeServer(layout), "celery", 0, (7, 0))
    login = results_login(layout)
    layout.aclfile.unlink()
    server = FakeServer(layout)

    changes = storesetup.setup(layout, server, "celery", 0, (7, 0))

    assert results_login(layout) == login
    assert changes == [f"wrote {layout.aclfile}", "restarted redis-server"]
    assert server.calls == ["login default", "restart redis-server", "login celery"]


def test_an_operators_20_results_yaml_that_sets_redis_already_is_kept(layout):
    layout.conf_d_file.parent.mkdir(parents=True)
    own = "results:\n  backend: redis\n  expires: 600\n"
    layout.conf_d_file.write_text(own)
    changes = storesetup.setup(layout, FakeServer(layout, worker=True), "celery", 0, (7, 0))
    assert layout.conf_d_file.read_text() == own
    assert f"wrote {layout.conf_d_file}" not in changes
    assert changes[-1] == "restarted celery-worker"  # for its new login


def test_a_20_results_yaml_that_does_not_set_redis_is_replaced(layout):
    layout.conf_d_file.parent.mkdir(parents=True)
    layout.conf_d_file.write_text("results:\n  backend: rpc\n")
    storesetup.setup(layout, FakeServer(layout), "celery", 0, (7, 0))
    assert layout.conf_d_file.read_text() == storesetup.CONF_D_TEXT


def test_redis_8_gets_client_setinfo(layout):
    storesetup.setup(layout, FakeServer(layout), "celery", 0, (8, 0))
    assert layout.aclfile.read_text().splitlines()[1].endswith(" +client|setinfo")


def test_a_stopped_server_is_started_on_its_own_config_first_so_its_data_is_kept(layout):
    client = FakeClient(keys=3)
    server = FakeServer(layout, active=False, client=client)

    storesetup.setup(layout, server, "celery", 0, (7, 0))

    assert server.calls == ["restart redis-server"] + FIRST_RUN[:-1] + ["login celery"]
    assert ("config_set", "appendonly", "yes") in client.commands


def make_tls(layout, cert=b"CERT\n"):
    layout.ca.dir.mkdir(parents=True, exist_ok=True)
    layout.ca.cert.write_text("CA\n")
    layout.broker_tls.mkdir(parents=True, exist_ok=True)
    (layout.broker_tls / "server.pem").write_bytes(cert)
    (layout.broker_tls / "server.key").write_bytes(b"KEY\n")


def test_with_tls_setups_ca_redis_gets_its_own_copy_of_the_broker_certificate(layout):
    make_tls(layout)
    storesetup.setup(layout, FakeServer(layout), "celery", 0, (7, 0))
    for path, data in ((layout.tls_cert, b"CERT\n"), (layout.tls_key, b"KEY\n")):
        assert path.read_bytes() == data
        assert mode(path) == (0o640, 0, grp.getgrnam(GROUP).gr_gid)
    tls = store.TlsFiles(layout.tls_cert, layout.tls_key, layout.ca.cert)
    assert layout.dropin.read_text() == store.render_dropin(tls, layout.aclfile)
    assert storesetup.setup(layout, FakeServer(layout), "celery", 0, (7, 0)) == []

    make_tls(layout, b"RENEWED\n")  # tls-setup run again
    server = FakeServer(layout)
    assert storesetup.setup(layout, server, "celery", 0, (7, 0)) == [
        f"wrote {layout.tls_cert}", "restarted redis-server"]
    assert layout.tls_cert.read_bytes() == b"RENEWED\n"


def test_a_ca_without_the_broker_certificate_is_a_config_error_naming_it(layout):
    make_tls(layout)
    (layout.broker_tls / "server.key").unlink()
    with pytest.raises(ConfigError, match=r"server\.key cannot be read .*--rabbitmq-dir"):
        storesetup.setup(layout, FakeServer(layout), "celery", 0, (7, 0))
    assert not layout.dropin.exists()


@pytest.mark.parametrize("appendonly, keys, turned_on", [
    ("no", 5, True), ("no", 0, False), ("yes", 5, False)],
    ids=["data-aof-off", "empty", "aof-on"])
def test_keep_existing_data_turns_the_aof_on_only_when_there_is_data_to_lose(
        appendonly, keys, turned_on):
    client = FakeClient(appendonly, keys)
    assert storesetup.keep_existing_data(client) is turned_on
    assert (("config_set", "appendonly", "yes") in client.commands) is turned_on
    assert client.rewrites == (0 if turned_on else 2)  # it waited for the rewrite


@pytest.mark.parametrize("client, timeout", [
    (FakeClient(keys=1, status="err"), 5), (FakeClient(keys=1, rewrites=10 ** 6), 0.3)],
    ids=["rewrite-failed", "timed-out"])
def test_a_rewrite_that_fails_or_never_ends_stops_before_any_restart(client, timeout):
    with pytest.raises(ConfigError, match="append-only file"):
        storesetup.keep_existing_data(client, timeout)


def test_remove_takes_it_all_away_and_then_has_nothing_left_to_do(layout):
    make_tls(layout)
    storesetup.setup(layout, FakeServer(layout), "celery", 0, (7, 0))
    server = FakeServer(layout, worker=True)

    changes = storesetup.remove(layout, server, 0)

    assert server.calls == ["daemon-reload", "restart redis-server", "restart celery-worker"]
    # redis-server went back to its own config while the files were still there.
    assert server.started_with[layout.aclfile] and not server.started_with[layout.dropin]
    assert not layout.dropin.parent.exists() and not layout.acl_dir.exists()
    assert not layout.conf_d_file.exists()
    assert results_login(layout) == {}
    assert account.load(layout.credentials)["password"] == SECRET
    assert layout.ca.cert.exists()  # tls-setup's, not ours
    assert len(changes) == 9
    assert storesetup.remove(layout, FakeServer(layout, worker=True), 0) == []


def test_remove_with_redis_server_stopped_does_not_start_it(layout):
    storesetup.setup(layout, FakeServer(layout), "celery", 0, (7, 0))
    server = FakeServer(layout, active=False)
    storesetup.remove(layout, server, 0)
    assert server.calls == ["daemon-reload"]


def test_the_summary_is_one_line():
    assert storesetup.summary([], False, "celery") == (
        "celeryd-admin: result store already set up (redis-server port 6379, account "
        "'celery'); nothing changed")
    assert storesetup.summary(["wrote a", "restarted b"], False, "celery", True) == (
        "celeryd-admin: result store ready (redis-server port 6379 and TLS port 6380, account "
        "'celery'): wrote a; restarted b")
    assert storesetup.summary([], True) == (
        "celeryd-admin: no result store set up here; nothing changed")


def test_the_command_prints_one_line_and_never_a_password(capsys, layout, monkeypatch):
    servers = []

    def fake_server():
        servers.append(FakeServer(layout))
        servers[-1].installed, servers[-1].version = (lambda: True), (lambda: (7, 0))
        return servers[-1]

    monkeypatch.setattr(storesetup, "RedisServer", fake_server)
    monkeypatch.setattr(store, "Layout", lambda config_file, rabbitmq_dir: layout)
    main = str(layout.credentials.parent / "celeryd.yaml")
    for expected in ("result store ready", "already set up"):
        code, out, err = run(capsys, "store-setup", "--config", main, "--group", "root")
        assert (code, err, out.count("\n")) == (0, "", 1) and expected in out
        for secret in (results_login(layout)["password"],
                       store.read_admin_password(layout.admin_password)):
            assert secret not in out
    code, out, err = run(capsys, "store-setup", "--remove", "--config", main, "--group", "root")
    assert (code, err) == (0, "") and out.startswith("celeryd-admin: result store removed: ")


def test_without_root_or_redis_server_it_exits_3_with_one_line(capsys, monkeypatch, layout):
    main = str(layout.credentials.parent / "celeryd.yaml")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    code, out, err = run(capsys, "store-setup", "--config", main)
    assert (code, out, err) == (3, "", "celeryd-admin: run as root (it writes "
                                       "/etc/celeryd and restarts redis-server)\n")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    real = storesetup.RedisServer
    monkeypatch.setattr(storesetup, "RedisServer", lambda: real("/nonexistent/redis-server"))
    code, out, err = run(capsys, "store-setup", "--config", main, "--group", "root")
    assert (code, out) == (3, "")
    assert err == ("celeryd-admin: /nonexistent/redis-server not found: apt "
                   "install redis-server, then run this again\n")


@pytest.mark.parametrize("argv", [["store-setup", "--bogus"], ["store-setup", "extra"]])
def test_bad_arguments_exit_2(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1
