"""The metrics endpoint: metrics.listen, the worker's gauges, serving and a port in use."""

import logging
import socket
import types
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celeryd_pkg import config, metrics
from celeryd_pkg.errors import ConfigError
from celeryd_pkg.schema import check_listen, split_listen


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9808", ("127.0.0.1", 9808)), ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[::1]:9808", ("::1", 9808)), ("[::]:65535", ("::", 65535)),
    ("metrics.example.org:9100", ("metrics.example.org", 9100)),
])
def test_listen_takes_host_colon_port(value, expected):
    assert split_listen(value) == expected
    assert check_listen(value) is None


@pytest.mark.parametrize("value", [
    "localhost", "9808", ":9808", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
    "127.0.0.1:http", "::1:9808", "[::1]", " :9808",
])
def test_listen_refuses_anything_but_host_colon_port(value):
    assert "is not HOST:PORT" in check_listen(value)


def test_a_bad_listen_is_a_config_error_naming_file_line_and_key(tmp_path):
    main = tmp_path / "celeryd.yaml"
    main.write_text("metrics:\n  enabled: true\n  listen: 9808\n")
    with pytest.raises(ConfigError) as raised:
        config.load(str(main), env={})
    assert raised.value.message == (
        f"celeryd: {main}: line 3: metrics.listen: expected a string, got an integer 9808")
    main.write_text("metrics:\n  listen: localhost\n")
    with pytest.raises(ConfigError, match=r"line 2: metrics\.listen: 'localhost' is not "
                                          r"HOST:PORT"):
        config.load(str(main), env={})


def test_metrics_are_off_by_default_on_loopback_port_9808(tmp_path):
    main = tmp_path / "celeryd.yaml"
    main.write_text("")
    settings = config.load(str(main), env={})
    assert settings.metrics.enabled is False
    assert settings.metrics.listen == "127.0.0.1:9808"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def settings(listen="127.0.0.1:9808", queues=("celery", "mail")):
    return types.SimpleNamespace(metrics=types.SimpleNamespace(listen=listen),
                                 worker=types.SimpleNamespace(queues=list(queues)))


def families(registry):
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_the_worker_gauges_carry_celery_exporters_names_and_labels(tmp_path):
    asked = []

    def lengths(cfg, queues):
        asked.append(list(queues))
        return {"celery": 7}  # mail: the broker did not answer for it

    found = families(metrics.registry(settings(), types.SimpleNamespace(connected=True),
                                      path=str(tmp_path), lengths=lengths))
    assert asked == [["celery", "mail"]]
    up = found["celery_worker_up"].samples
    assert [(s.labels.keys(), s.value) for s in up] == [({"hostname": 0}.keys(), 1)]
    assert [s.value for s in found["celery_worker_tasks_active"].samples] == [0]
    assert [(s.labels, s.value) for s in found["celery_queue_length"].samples] == [
        ({"queue_name": "celery"}, 7)]


def test_a_worker_without_its_broker_is_not_up(tmp_path):
    found = families(metrics.registry(settings(), types.SimpleNamespace(connected=False),
                                      path=str(tmp_path), lengths=lambda *_: {}))
    assert [s.value for s in found["celery_worker_up"].samples] == [0]
    assert found["celery_queue_length"].samples == []


def test_queue_lengths_of_an_unreachable_broker_are_none_not_zero():
    unreachable = types.SimpleNamespace(
        broker=types.SimpleNamespace(host="127.0.0.1", port=1, user="u", password="p",
                                     vhost="v", connect_timeout=1, tls=False),
        broker_url=lambda **_: "amqp://u@127.0.0.1:1/v")
    assert metrics.queue_lengths(unreachable, ["celery"]) == {}


def test_the_endpoint_serves_metrics_over_http(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics.tally, "directory", lambda: str(tmp_path))
    monkeypatch.setattr(metrics, "queue_lengths", lambda *_: {"celery": 2})
    server = metrics.serve(settings(f"127.0.0.1:{free_port()}"))
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"celery_worker_up", "celery_worker_tasks_active",
                "celery_queue_length"} <= names
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_in_use_is_one_log_line_and_no_server(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(metrics.tally, "directory", lambda: str(tmp_path))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    listen = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        with caplog.at_level(logging.INFO, logger="celeryd.metrics"):
            assert metrics.serve(settings(listen)) is None
    finally:
        taken.close()
    assert [record.getMessage() for record in caplog.records] == [
        f"metrics: cannot listen on {listen} (metrics.listen): Address already in use; "
        f"the worker runs without metrics"]
