"""RabbitMQ least privilege (issue 7, promise 6), against a real RabbitMQ: the account that
`celeryd-admin provision` makes has permissions on its own vhost only and no tags; it cannot
open another vhost; the worker and the client log in as that account, never as guest."""

import secrets

import pytest

from celeryd_pkg import broker, config
from celeryd_pkg.errors import VhostRefused
from tests.integration.conftest import REPO, clean_env, run_module, submit

pytestmark = pytest.mark.integration

RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


@pytest.fixture
def provisioned(tmp_path, rabbitmq):
    """An account made by `celeryd-admin provision` on the test node: (config path, names)."""
    suffix = secrets.token_hex(3)
    names = {"user": f"lp-{suffix}", "vhost": f"lp-{suffix}"}
    etc = tmp_path / "etc"
    etc.mkdir()
    main = etc / "celeryd.yaml"
    main.write_text(f"broker:\n  host: 127.0.0.1\n  port: {rabbitmq.port}\n"
                    f"  vhost: {names['vhost']}\n  user: {names['user']}\n")
    result = run_module("celeryd_pkg.admin", "provision", "--config", str(main), "--user",
                        names["user"], "--vhost", names["vhost"], "--group", "root",
                        env=clean_env(**rabbitmq.env, CELERYD_RABBITMQCTL=RABBITMQCTL),
                        timeout=120)
    assert result.returncode == 0, result.stderr
    return main, names


def rows(rabbitmq, *args):
    return [line.split("\t") for line in
            rabbitmq.ctl(*args, "--no-table-headers").stdout.splitlines() if line.strip()]


def test_the_account_has_permissions_on_its_own_vhost_only_and_no_tags(rabbitmq, provisioned):
    _, names = provisioned
    assert rows(rabbitmq, "list_user_permissions", names["user"]) == [
        [names["vhost"], ".*", ".*", ".*"]]
    users = {row[0]: row[1] for row in rows(rabbitmq, "list_users")}
    assert users[names["user"]] in ("[]", "")  # not administrator, monitoring or management
    # Nobody else was given its vhost (no guest, no other account).
    assert [row[0] for row in rows(rabbitmq, "list_permissions", "-p", names["vhost"])] == [
        names["user"]]


def test_the_account_cannot_open_another_vhost(tmp_path, rabbitmq, provisioned):
    main, names = provisioned
    other = names["vhost"] + "-other"
    rabbitmq.ctl("add_vhost", other)
    settings = config.load(str(main), env={})
    broker.connect(settings).close()  # its own vhost: fine
    for vhost in (other, "/"):
        with pytest.raises(VhostRefused) as info:
            broker.connect(settings, vhost=vhost)
        assert settings.broker.password not in info.value.message
        assert f"access to vhost '{vhost}'" in info.value.message  # the one refused
    # Through the client, as an operator would try it: exit 5, and nothing sent there.
    result = submit(main, "add", "1", "1", env=clean_env(CELERYD_BROKER_VHOST=other))
    assert result.returncode == 5, result.stderr
    assert f"access to vhost '{other}'" in result.stderr
    assert rows(rabbitmq, "list_queues", "-p", other, "name") == []


def test_worker_and_client_log_in_as_the_account_and_never_as_guest(rabbitmq, provisioned,
                                                                    start_worker):
    main, names = provisioned
    start_worker(main)
    assert submit(main, "add", "2", "3").stdout == "5\n"
    connections = rows(rabbitmq, "list_connections", "user", "vhost")
    ours = [row for row in connections if row[1] == names["vhost"]]
    assert ours and all(row[0] == names["user"] for row in ours)
    assert not [row for row in connections if row[0] == "guest"]
    # The shipped config and the built-in defaults name the account, never guest.
    assert config.load(str(REPO / "conf" / "celeryd.yaml"), env={}).broker.user == "celery"
    assert config.load(env={"CELERYD_ROOT": str(main.parent / "nothing")}).broker.user == "celery"
