"""provision --for-host NAME --role broker and join on NAME, with the fake rabbitmqctl: what the
join string carries (node, cookie, the certificate naming every broker), where each part is
written, the rabbitmqctl calls, and the cookie never on argv, in the environment or output.
The real cluster forms in tests/system/test_cluster.py."""

import json
import os
import pwd
import stat

import pytest

from celeryd_pkg import account, config
from celeryd_pkg.admin import cluster, tls
from tests.unit.admin.conftest import run
from tests.unit.fake_rabbitmqctl import WRITES

COOKIE = "XKQWJHZQPLMNBVCXZASD"
NODES = "rmq-a,rmq-b:5999,rmq-c"

pytestmark = pytest.mark.skipif(
    not any(p.pw_name == "rabbitmq" for p in pwd.getpwall()),
    reason="needs the rabbitmq user, which make deps installs with rabbitmq-server")


def set_node(fake, node, members=None):
    state = fake.state() if fake.state_path.exists() else {"users": {}, "vhosts": ["/"],
                                                           "perms": {}}
    state["node"], state["cluster"] = node, members or [node]
    fake.state_path.write_text(json.dumps(state))


@pytest.fixture
def first(tmp_path, fake, monkeypatch):
    """The first broker host: TLS set up for every broker name, its cookie; its config."""
    etc = tmp_path / "a" / "etc"
    etc.mkdir(parents=True)
    (etc / "celeryd.yaml").write_text("")
    rabbitmq = tmp_path / "a" / "rabbitmq"
    tls.setup(tls.ca_files(etc), rabbitmq, ["rmq-a", "rmq-b", "rmq-c"], group="root")
    cookie = tmp_path / "a" / "cookie"
    cookie.write_text(COOKIE)
    monkeypatch.setattr(cluster, "COOKIE", str(cookie))
    monkeypatch.setattr(cluster, "RABBITMQ_DIR", str(rabbitmq))
    set_node(fake, "rabbit@rmq-a")
    return etc / "celeryd.yaml", rabbitmq


@pytest.fixture
def join_string(capsys, first):
    main, _ = first
    code, out, err = run(capsys, "provision", "--for-host", "rmq-b", "--role", "broker",
                         "--broker-host", NODES, "--config", str(main))
    assert (code, err) == (0, ""), err
    return out.strip()


def test_a_broker_join_string_carries_the_node_cookie_and_certificate(join_string, first,
                                                                      fake):
    main, rabbitmq = first
    joined = account.from_url(join_string)
    assert joined["hosts"] == ["rmq-a:5671", "rmq-b:5999", "rmq-c:5671"]
    assert (joined["user"], joined["tls"]) == ("broker-rmq-b", True)
    node = joined["cluster"]
    assert (node["node"], node["cookie"]) == ("rabbit@rmq-a", COOKIE)
    assert node["cert"] == (rabbitmq / "tls" / "server.pem").read_text()
    assert node["key"] == (rabbitmq / "tls" / "server.key").read_text()
    assert fake.state()["queue_type"] == {"celery": "quorum"}
    assert COOKIE not in account.to_url(joined)  # the masked form shows no secret
    # rmq-a remembers the nodes: a worker's join string names them all.
    assert config.load(str(main), env={}).broker.hosts == NODES.split(",")


def test_join_makes_this_broker_a_node_of_the_cluster_and_a_rerun_changes_nothing(
        capsys, monkeypatch, tmp_path, join_string, fake):
    here = tmp_path / "b"
    (here / "etc").mkdir(parents=True)
    (here / "etc" / "celeryd.yaml").write_text("")
    monkeypatch.setattr(cluster, "COOKIE", str(here / "cookie"))
    monkeypatch.setattr(cluster, "RABBITMQ_DIR", str(here / "rabbitmq"))
    monkeypatch.setenv("CELERYD_ROOT", str(here / "root"))
    set_node(fake, "rabbit@rmq-b")
    fake.reset_log()
    main = here / "etc" / "celeryd.yaml"
    code, out, err = run(capsys, "join", "-", "--config", str(main), "--group", "root",
                         stdin=join_string, monkeypatch=monkeypatch)
    assert (code, err) == (0, ""), err
    assert "rabbitmq-server here is a node of rabbit@rmq-a's cluster" in out
    assert fake.commands() == ["cluster_status", "stop_app", "join_cluster", "start_app"]
    assert fake.calls()[2]["argv"][-1] == "rabbit@rmq-a"
    cookie = here / "cookie"
    assert cookie.read_text() == COOKIE
    mode = cookie.stat()
    assert (stat.S_IMODE(mode.st_mode), mode.st_uid) == (0o400, pwd.getpwnam("rabbitmq").pw_uid)
    server_key = here / "rabbitmq" / "tls" / "server.key"
    assert stat.S_IMODE(server_key.stat().st_mode) == 0o640
    assert (here / "rabbitmq" / "conf.d" / "50-celeryd-tls.conf").exists()
    for call in fake.calls():
        assert all(COOKIE not in arg for arg in call["argv"])
        assert all(COOKIE not in value for value in call["env"].values())
        assert COOKIE not in call["stdin"]
    assert COOKIE not in out + err
    settings = config.load(str(main), env={})
    assert settings.is_cluster() and settings.broker.host == "rmq-a"
    assert not (here / "root").exists()  # no worker unit here: no drop-in
    assert sorted(os.listdir(here / "etc")) == ["broker-ca.pem", "celeryd.yaml", "credentials"]

    fake.reset_log()
    code, out, err = run(capsys, "join", "-", "--config", str(main), "--group", "root",
                         stdin=join_string, monkeypatch=monkeypatch)
    assert code == 0 and not WRITES & set(fake.commands())
    assert fake.commands() == ["cluster_status"]


@pytest.mark.parametrize("part", ["notbase64!", "eyJub2RlIjogMX0",  # {"node": 1}
                                  account.joinparts.encode_cluster({"node": "x", "cookie": "c"}),
                                  account.joinparts.encode_cluster(
                                      {"node": "rabbit@a", "cookie": "c", "cert": "-----BEGIN x"})])
def test_a_damaged_cluster_part_is_a_usage_error_naming_it(capsys, monkeypatch, etc, part):
    main, creds = etc
    code, out, err = run(capsys, "join", "-", "--config", str(main), "--group", "root",
                         stdin=f"amqps://u:p4ss@a,b/v?cluster={part}", monkeypatch=monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "cluster:" in err and "p4ss" not in err
    assert not creds.exists()


def test_health_on_a_broker_host_names_the_running_and_stopped_members(fake):
    set_node(fake, "rabbit@rmq-a", ["rabbit@rmq-a", "rabbit@rmq-b"])
    assert cluster.health(2, [], fake.ctl()) == (
        "OK", "2 of 2 nodes running: rabbit@rmq-a, rabbit@rmq-b", "")


def test_health_elsewhere_counts_the_nodes_this_host_reaches(fake):
    status, detail, hint = cluster.health(3, ["port 5671 (10.0.0.3: Connection refused)"],
                                          fake.ctl(FAKE_CTL_DOWN="1"))
    assert (status, detail) == ("WARN", "2 of 3 nodes answer")
    assert "systemctl status rabbitmq-server" in hint
    assert cluster.health(3, [], fake.ctl(FAKE_CTL_DOWN="1")) == ("OK", "3 of 3 nodes answer", "")


def test_check_warns_of_a_node_down_and_fails_only_when_none_answers(tmp_path):
    import socket

    from celeryd_pkg.admin import check

    listener = socket.create_server(("127.0.0.1", 0))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    live = listener.getsockname()[1]
    main = tmp_path / "celeryd.yaml"
    main.write_text(f"broker:\n  hosts: ['127.0.0.1:{dead}', '127.0.0.1:{live}']\n")
    with listener:
        lines = {r.name: r for r in check.diagnose(str(main), env={})}
    assert lines["tcp"].status == "WARN"
    assert lines["tcp"].detail == (f"connected to 127.0.0.1 port {live}; cannot connect to "
                                   f"port {dead} (127.0.0.1: Connection refused)")
    main.write_text(f"broker:\n  hosts: ['127.0.0.1:{dead}', '127.0.0.1:{live}']\n")
    lines = {r.name: r for r in check.diagnose(str(main), env={})}
    assert (lines["tcp"].status, lines["tcp"].exit_code) == ("FAIL", 4)
    assert lines["tcp"].detail == (f"cannot connect to port {dead} (127.0.0.1: Connection "
                                   f"refused) nor port {live} (127.0.0.1: Connection refused)")
