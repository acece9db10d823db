"""Unit tests: other hosts' result-store accounts (provision --for-host, deprovision) with
store-setup's fake redis-server; the real one: tests/system/test_results.py."""

import pytest

from celeryd_pkg import account
from celeryd_pkg.admin import store, storeaccounts, storesetup
from celeryd_pkg.errors import BrokerUnreachable
from tests.unit.admin.conftest import run
from tests.unit.admin.test_storesetup import FakeClient, FakeServer, sha


class LoadingClient(FakeClient):
    def __init__(self, fail=None):
        super().__init__()
        self.fail, self.loads = fail, 0

    def acl_load(self):
        if self.fail:
            raise self.fail
        self.loads += 1



class Server(FakeServer):
    installed = staticmethod(lambda: True)
    version = staticmethod(lambda: (7, 0))


@pytest.fixture
def ready(layout):
    """store-setup has run here: the admin password and this host's own account."""
    server = Server(layout, client=LoadingClient())
    storesetup.setup(layout, server, "celery", 0, (7, 0))
    server.calls.clear()
    return layout, server


def accounts(layout):
    return store.parse_aclfile(layout.aclfile.read_text())[0]


def test_not_here_until_store_setup_ran(layout):
    server = Server(layout)
    assert not storeaccounts.here(layout, server)
    storesetup.setup(layout, Server(layout, client=LoadingClient()), "celery", 0, (7, 0))
    assert storeaccounts.here(layout, server)


def test_add_gives_the_role_a_fresh_password_live_and_proves_it(ready):
    layout, server = ready
    password = storeaccounts.add(layout, server, "client-web1", "client")
    assert server.calls == ["login default", "login client-web1"]
    assert server.client.loads == 1
    digest, role = accounts(layout)["client-web1"]
    assert (digest, role) == (sha(password), "client") and "celery" in accounts(layout)
    assert password not in layout.aclfile.read_text()
    again = storeaccounts.add(layout, server, "client-web1", "client")
    assert again != password and accounts(layout)["client-web1"][0] == sha(again)


def test_remove_takes_the_account_out_live_and_says_whether_there_was_one(ready):
    layout, server = ready
    storeaccounts.add(layout, server, "worker-b", "worker")
    assert storeaccounts.remove(layout, server, "worker-b") is True
    assert "worker-b" not in accounts(layout) and "celery" in accounts(layout)
    assert storeaccounts.remove(layout, server, "worker-b") is False


def test_a_refused_acl_load_puts_the_old_file_back_and_is_one_line(ready):
    layout, server = ready
    before = layout.aclfile.read_text()
    server.client = LoadingClient(fail=ConnectionError("Connection refused"))
    with pytest.raises(BrokerUnreachable) as failed:
        storeaccounts.add(layout, server, "client-web1", "client")
    assert layout.aclfile.read_text() == before
    assert "cannot talk to redis-server" in failed.value.message


def test_joined_hosts_get_backend_redis_unless_a_file_already_says_so(tmp_path):
    path = tmp_path / "conf.d" / "20-results.yaml"
    assert storeaccounts.store_results_here(path) is True
    assert path.read_text() == storeaccounts.JOINED_CONF_TEXT
    assert storeaccounts.store_results_here(path) is False


def test_provision_for_host_puts_the_store_login_in_the_join_string(
        capsys, monkeypatch, fake, ready):
    layout, server = ready
    monkeypatch.setattr(storesetup, "RedisServer", lambda: server)
    main = layout.credentials.parent / "celeryd.yaml"
    code, out, err = run(capsys, "provision", "--for-host", "web1", "--role", "client",
                         "--broker-host", "10.1.1.1", "--config", str(main))
    assert code == 0
    joined = account.from_url(out.strip())
    assert accounts(layout)["client-web1"] == (sha(joined["results_password"]), "client")

    code, out, err = run(capsys, "deprovision", "--user", "client-web1", "--vhost", "celery",
                         "--config", str(main))
    assert code == 0 and "client-web1" not in accounts(layout)
    assert account.load_results(layout.credentials)["user"] == "celery"  # ours stays


def test_deprovision_with_the_store_down_warns_and_removes_the_broker_account(
        capsys, monkeypatch, fake, ready):
    layout, server = ready
    main = layout.credentials.parent / "celeryd.yaml"
    monkeypatch.setattr(storesetup, "RedisServer", lambda: server)
    run(capsys, "provision", "--for-host", "web1", "--role", "client", "--config", str(main))

    def down(user, password):
        raise BrokerUnreachable("celeryd-admin: cannot talk to redis-server at 127.0.0.1:6379 "
                                "(Connection refused): journalctl -u redis-server")

    monkeypatch.setattr(server, "login", down)
    code, out, err = run(capsys, "deprovision", "--user", "client-web1", "--config", str(main))
    assert (code, out) == (0, "")
    assert err == ("celeryd-admin: warning: the result store account of 'client-web1' stays: "
                   "celeryd-admin: cannot talk to redis-server at 127.0.0.1:6379 (Connection "
                   "refused): journalctl -u redis-server\n")
    assert "client-web1" not in fake.state()["users"] and "client-web1" in accounts(layout)
