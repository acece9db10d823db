"""The application's client app, without a broker: the workers' settings, the current app,
no worker code, and celeryd's one-line errors for a missing password or an absent broker."""

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import celery
import celery.exceptions
import pytest
from celery import _state

from celeryd_pkg import client, config
from celeryd_pkg.errors import BrokerUnreachable, ConfigError, ResultTimeout, TlsFailed
from celeryd_pkg.settings import celery_settings
from tests.integration.broker import free_port

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-client-pw"
# Where the client deliberately differs from the workers: it gives up on the broker after
# one connect, and retries a publish itself (on a fresh reply channel).
CLIENT_ONLY = {"broker_transport_options", "task_publish_retry"}
WORKER_SIDE = ("app", "worker", "tasks", "monitor", "notify", "admin", "poison")


@pytest.fixture
def etc(tmp_path):
    """Return a function writing celeryd.yaml with extra YAML and a credentials file with
    SECRET beside it (none if password is None); it returns the file's path."""
    def write(extra="", password=SECRET):
        if password is not None:
            (tmp_path / "credentials").write_text(f"broker:\n  password: {password}\n")
        main = tmp_path / "celeryd.yaml"
        main.write_text(extra)
        return main
    return write


@pytest.fixture(autouse=True)
def keep_celerys_current_app():
    """load_app makes its app current and default: give the next test the ones it had."""
    default, current = _state.default_app, getattr(_state._tls, "current_app", None)
    yield
    _state.set_default_app(default)
    _state._set_current_app(current)


def test_the_client_has_exactly_the_workers_settings_but_gives_up_on_the_broker(etc):
    main = etc("worker:\n  queues: [jobs, mail]\n  prefetch_multiplier: 2\n")
    expected = celery_settings(config.load(str(main)))
    app = client.load_app(str(main))
    conf = app.conf
    assert {key: conf[key] for key in expected if key not in CLIENT_ONLY} == {
        key: value for key, value in expected.items() if key not in CLIENT_ONLY}
    assert conf.broker_transport_options == {"confirm_publish": True,
                                            "max_retries": client.CONNECT_RETRIES}
    assert conf.task_publish_retry is False
    # The same queues, which the client never declares (a submit-only account may not).
    assert [(q.name, q.exchange.name, q.no_declare) for q in conf.task_queues] == [
        ("jobs", "jobs", True), ("mail", "mail", True)]
    assert (conf.task_default_queue, conf.result_backend) == ("jobs", "rpc://")
    assert conf.broker_url == f"amqp://celery:{SECRET}@localhost:5672/celery"
    # Replies by direct reply-to, which needs no queue of the client's own.
    assert isinstance(app.backend, client.DirectReplyBackend)
    assert app.thread_oid == "amq.rabbitmq.reply-to"


def test_an_eager_task_runs_without_connecting(etc):
    main = etc(f"broker:\n  host: 127.0.0.1\n  port: {free_port()}\n")
    app = client.load_app(str(main))
    app.conf.task_always_eager = True

    @app.task(name="test_client.multiply", shared=False)
    def multiply(x, y):
        return x * y
    assert multiply.delay(6, 7).get(timeout=1) == 42


def test_the_client_is_celerys_current_app_in_every_thread(etc):
    app = client.load_app(str(etc()))
    seen = []
    thread = threading.Thread(target=lambda: seen.append(celery.current_app._get_current_object()))
    thread.start()
    thread.join()
    assert celery.current_app._get_current_object() is app
    assert seen == [app]


def test_importing_and_using_app_binds_shared_tasks_and_loads_no_worker_code(etc):
    main = etc("tasks:\n  modules: [celeryd_test_never_imported]\n")
    code = (
        "import json, sys\n"
        "from celeryd_pkg.client import app, ClientResult\n"
        "from celery import shared_task\n"
        "@shared_task\n"
        "def add(x, y):\n    return x + y\n"
        "print(json.dumps({'bound': add.app is app, 'name': add.name,\n"
        "    'result': isinstance(add.AsyncResult('an-id'), ClientResult),\n"
        "    'registered': add.name in app.tasks, 'queue': app.conf.task_default_queue,\n"
        "    'modules': sorted(m for m in sys.modules if m.startswith('celeryd'))}))\n")
    result = subprocess.run(["/usr/bin/python3", "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120,
                            env={"PYTHONPATH": str(REPO), "CELERYD_CONFIG": str(main)})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert (found["bound"], found["result"], found["registered"], found["queue"]) == (
        True, True, True, "celery")
    # Not celeryd.add: a script's own task must not take a built-in's name.
    assert found["name"] == "__main__.add"
    assert "celeryd_pkg.client" in found["modules"]
    worker_side = {f"celeryd_pkg.{name}" for name in WORKER_SIDE}
    assert [name for name in found["modules"] if name.startswith("celeryd_test")
            or name in worker_side or name.startswith(tuple(f"{w}." for w in worker_side))] == []


def test_no_password_is_a_one_line_config_error_naming_the_credentials_file(etc):
    main = etc(password=None)
    with pytest.raises(ConfigError) as raised:
        client.load_app(str(main))
    message = raised.value.message
    assert raised.value.exit_code == 3 and "\n" not in message
    assert str(main.parent / "credentials") in message
    assert "celeryd-admin provision" in message and "celeryd-admin join" in message


def test_the_lazy_app_raises_the_config_error_not_an_import_error(etc, monkeypatch):
    monkeypatch.setenv("CELERYD_CONFIG", str(etc(password=None)))
    monkeypatch.delitem(vars(client), "app", raising=False)
    with pytest.raises(ConfigError):
        exec("from celeryd_pkg.client import app", {})
    assert "app" not in vars(client)


class FakeBroker:
    """A local port that accepts connections and then says nothing (a hung broker), or
    answers as RabbitMQ's plain AMQP port answers a TLS handshake: its protocol header."""

    def __init__(self, speaks):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        if speaks:
            threading.Thread(target=self.answer_plainly, daemon=True).start()

    def answer_plainly(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            connection.recv(4096)
            connection.sendall(b"AMQP\x00\x00\x09\x01")
            connection.close()

    def close(self):
        self.server.close()


@pytest.mark.parametrize("broker, extra, expected", [
    pytest.param("closed port", "", BrokerUnreachable, id="closed-port"),
    pytest.param("hung broker", "", BrokerUnreachable, id="hung-broker"),
    pytest.param("plain AMQP port", "  tls: true\n  verify: false\n", TlsFailed,
                 id="tls-to-a-plain-port"),
])
def test_an_unusable_broker_is_a_one_line_error_from_send_task_within_a_bound(
        etc, broker, extra, expected):
    fake = None if broker == "closed port" else FakeBroker(speaks=broker == "plain AMQP port")
    port = fake.port if fake else free_port()
    main = etc(f"broker:\n  host: 127.0.0.1\n  port: {port}\n  connect_timeout: 2\n{extra}")
    app = client.load_app(str(main))
    started = time.monotonic()
    try:
        with pytest.raises(expected) as raised:
            app.send_task("celeryd.add", (4, 4))
    finally:
        if fake:
            fake.close()
    # One connect of at most broker.connect_timeout (2 s here), no retry loop.
    assert time.monotonic() - started < 8
    assert raised.value.exit_code == 4 and f"127.0.0.1:{port}" in raised.value.message
    assert "\n" not in raised.value.message and SECRET not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_the_result_timeout_is_both_celeryds_and_celerys():
    error = client.ResultTimeoutError("celeryd: no result")
    assert isinstance(error, ResultTimeout) and isinstance(error, celery.exceptions.TimeoutError)
    assert (error.exit_code, error.message) == (6, "celeryd: no result")
