"""A broker of several nodes (broker.hosts): the list in the config and in a join string, the
client's failover from a node out of reach to the next, and the Celery settings of a cluster
(quorum queues), refused under Celery 5.2."""

import json
import socket

import celery
import pytest

from celeryd_pkg import account, broker, config, protocol, settings
from celeryd_pkg.errors import BrokerUnreachable, ConfigError, UsageError
from celeryd_pkg.schema import check_host, split_host

SECRET = "s3cret"


def load(tmp_path, env=None, **broker_keys):
    main = tmp_path / "celeryd.yaml"
    main.write_text("broker:\n" + "".join(f"  {k}: {json.dumps(v)}\n"
                                          for k, v in broker_keys.items()))
    (tmp_path / "credentials").write_text(f"broker:\n  password: {SECRET}\n")
    return config.load(str(main), env=env or {})


def dead_port():
    """A local TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("value, expected", [
    ("rabbit-b", ("rabbit-b", None)),
    ("Rabbit-B.example.org:5671", ("rabbit-b.example.org", 5671)),
    ("10.0.0.2:5672", ("10.0.0.2", 5672)),
    ("[fd00::2]:5671", ("fd00::2", 5671)),
    ("[fd00::2]", ("fd00::2", None)),
])
def test_a_node_is_a_host_with_an_optional_port(value, expected):
    assert split_host(value) == expected
    assert check_host(value) is None


@pytest.mark.parametrize("value", ["b:0", "b:70000", "b:x", ":5672", "[fd00::2", "b c",
                                   "[fd00::2]x", "b/c"])
def test_a_malformed_node_names_itself_and_the_expected_form(value):
    assert check_host(value).startswith(f"{value!r} is not HOST or HOST:PORT")


def test_hosts_replace_host_and_take_the_broker_port_by_default(tmp_path):
    loaded = load(tmp_path, host="ignored", hosts=["a", "b:5999", "c"], tls=True)
    assert loaded.broker.host == "a"
    assert loaded.broker_addresses() == [("a", 5671), ("b", 5999), ("c", 5671)]
    assert loaded.is_cluster()
    assert loaded.broker_url() == "amqps://celery:***@a:5671,b:5999,c:5671/celery"


def test_one_host_is_no_cluster_and_hosts_come_from_the_environment_too(tmp_path):
    assert not load(tmp_path, hosts=["only"]).is_cluster()
    assert load(tmp_path).broker_addresses() == [("localhost", 5672)]
    loaded = load(tmp_path, env={"CELERYD_BROKER_HOSTS": "a, b"})
    assert loaded.broker_addresses() == [("a", 5672), ("b", 5672)] and loaded.is_cluster()


def test_a_bad_node_in_the_config_names_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, hosts=["a", "b:99999"])
    assert "broker.hosts" in raised.value.message and "celeryd.yaml" in raised.value.message
    assert raised.value.exit_code == 3


def test_a_join_string_names_every_node_and_the_credentials_file_keeps_them(tmp_path):
    joined = account.from_url(f"amqps://u:{SECRET}@a:5671,B,[fd00::3]:5999/v")
    assert (joined["host"], joined["port"]) == ("a", 5671)
    assert joined["hosts"] == ["a:5671", "b:5671", "[fd00::3]:5999"]
    assert account.to_url(joined, masked=False) == f"amqps://u:{SECRET}@a:5671,b:5671," \
                                                   f"[fd00::3]:5999/v"
    path = tmp_path / "credentials"
    path.write_text(account.render(joined))
    assert account.load(path)["hosts"] == joined["hosts"]
    single = account.from_url(f"amqps://u:{SECRET}@a/v")
    assert "hosts" not in single


@pytest.mark.parametrize("netloc", ["a,a:5671", "a,,b", "a,b:0"])
def test_a_join_string_with_a_repeated_empty_or_bad_node_is_a_usage_error(netloc):
    with pytest.raises(UsageError) as raised:
        account.from_url(f"amqps://u:{SECRET}@{netloc}/v")
    assert "host" in raised.value.message and SECRET not in raised.value.message


def test_the_client_fails_over_from_a_node_out_of_reach_to_the_next(tmp_path):
    """Nothing listens on either port: each node is tried, and the error says so."""
    first, second = dead_port(), dead_port()
    loaded = load(tmp_path, hosts=[f"127.0.0.1:{first}", f"127.0.0.1:{second}"],
                  connect_timeout=2)
    with pytest.raises(BrokerUnreachable) as raised:
        broker.connect(loaded)
    message = raised.value.message
    assert message.startswith("none of 2 broker nodes answered; the last: ")
    assert f"127.0.0.1:{second}" in message and SECRET not in message


def test_a_cluster_gives_celery_every_node_and_verifies_each_by_its_own_name(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(celery, "VERSION", (5, 5, 2))
    loaded = load(tmp_path, hosts=["a", "b"], tls=True, user="w")
    made = settings.celery_settings(loaded)
    assert made["broker_url"] == f"amqps://w:{SECRET}@a:5671/celery;" \
                                 f"amqps://w:{SECRET}@b:5671/celery"
    assert made["broker_use_ssl"]["server_hostname"] is None
    assert (made["task_default_queue_type"], made["worker_detect_quorum_queues"]) == (
        "quorum", True)
    (queue,) = made["task_queues"]
    assert queue.queue_arguments == {"x-queue-type": "quorum"}
    assert (queue.exchange.name, queue.exchange.type) == ("celery", "topic")


def test_one_broker_keeps_classic_queues_on_direct_exchanges(tmp_path):
    made = settings.celery_settings(load(tmp_path, host="a", tls=True))
    assert made["broker_url"] == f"amqps://celery:{SECRET}@a:5671/celery"
    assert made["broker_use_ssl"]["server_hostname"] == "a"
    (queue,) = made["task_queues"]
    assert not queue.queue_arguments and queue.exchange.type == "direct"
    assert "task_default_queue_type" not in made


@pytest.mark.skipif(celery.VERSION >= (5, 5), reason="the refusal is Celery 5.2's (Debian 12)")
def test_celery_before_5_5_refuses_a_cluster_with_one_line_and_exit_3(tmp_path):
    with pytest.raises(ConfigError) as raised:
        settings.celery_settings(load(tmp_path, hosts=["a", "b", "c"]))
    assert raised.value.exit_code == 3 and "\n" not in raised.value.message
    assert "cluster of 3 nodes" in raised.value.message
    assert f"Celery {celery.__version__} cannot consume" in raised.value.message


def test_a_task_goes_to_its_queue_exchange_unless_a_cluster_delays_it():
    assert protocol.destination("jobs") == ("jobs", "jobs")
    assert protocol.destination("jobs", 30) == ("jobs", "jobs")
    assert protocol.destination("jobs", 0.5, cluster=True) == ("jobs", "jobs")
    try:
        import kombu.transport.native_delayed_delivery  # noqa: F401 - kombu 5.4 and later
    except ImportError:
        with pytest.raises(ConfigError) as raised:
            protocol.destination("jobs", 30, cluster=True)
        assert "kombu 5.4" in raised.value.message and raised.value.exit_code == 3
    else:
        exchange, key = protocol.destination("jobs", 5, cluster=True)
        assert exchange == "celery_delayed_27" and key == "0." * 25 + "1.0.1.jobs"
