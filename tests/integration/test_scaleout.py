"""Scale-out against real RabbitMQ nodes: TLS join strings, the submit-only client role,
queues and routing, and named worker instances."""

import json
import re
import subprocess

import amqp
import pytest

from celeryd_pkg import broker, config
from celeryd_pkg.admin import tls
from celeryd_pkg.errors import BrokerUnreachable, TlsFailed, VhostRefused
from tests.integration.broker import RabbitMQ
from tests.integration.conftest import submit, write_config
from tests.integration.test_admin import admin

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker_host(tmp_path_factory):
    """A RabbitMQ node with the TLS listener and CA that `celeryd-admin tls-setup` makes:
    (node, the broker host's celeryd.yaml)."""
    base = tmp_path_factory.mktemp("tls-broker")
    etc = base / "etc"
    etc.mkdir()
    (etc / "celeryd.yaml").write_text("# the broker host's own config\n")
    tls.setup(tls.ca_files(etc), base / "rabbitmq", ["127.0.0.1", "localhost"], group="root")
    node = RabbitMQ(base / "node", tls_dir=base / "rabbitmq" / "tls")
    try:
        node.start()
        yield node, etc / "celeryd.yaml"
    finally:
        node.close()


def join_string(node, broker_etc, name, role):
    """Run `celeryd-admin provision --for-host NAME --role ROLE` on the broker host; return
    the join string, its port set to the test node's TLS port."""
    result = admin(node, "provision", "--for-host", name, "--role", role, "--broker-host",
                   "127.0.0.1", "--config", str(broker_etc))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"amqps://{role}-{name}:") and "?ca=" in result.stdout
    return result.stdout.replace(":5671/", f":{node.tls_port}/")


def join(node, directory, text):
    """Run `celeryd-admin join -` for a host whose config lives in directory."""
    directory.mkdir(parents=True, exist_ok=True)
    main = directory / "celeryd.yaml"
    main.write_text("# all from the join string\n")
    result = admin(node, "join", "-", "--config", str(main), "--group", "root", input=text)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # amqps: no plain-AMQP warning
    password = config.load(main, env={}).broker.password
    assert password and password not in result.stdout
    return main


@pytest.fixture(scope="module")
def fleet(broker_host, tmp_path_factory):
    """A worker host and a client host joined to the TLS broker: (node, worker etc, client
    etc)."""
    node, broker_etc = broker_host
    base = tmp_path_factory.mktemp("fleet")
    worker_etc = join(node, base / "worker", join_string(node, broker_etc, "wk", "worker"))
    client_etc = join(node, base / "client", join_string(node, broker_etc, "cl", "client"))
    return node, worker_etc, client_etc


def test_worker_and_client_joined_over_tls_run_add_4_4(fleet, start_worker):
    node, worker_etc, client_etc = fleet
    settings = config.load(client_etc, env={})
    assert (settings.broker.tls, settings.broker.port) == (True, node.tls_port)
    assert settings.broker_url().startswith("amqps://client-cl:***@127.0.0.1:")
    worker = start_worker(worker_etc)
    assert "Consuming" in worker.wait_for("STATUS=Consuming")
    result = submit(client_etc, "add", "4", "4")
    assert (result.returncode, result.stdout, result.stderr) == (0, "8\n", "")


def test_check_on_the_client_host_is_ok_at_every_step_and_says_tls(fleet, start_worker):
    node, worker_etc, client_etc = fleet
    start_worker(worker_etc)
    result = admin(node, "check", "--config", str(client_etc))
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout
    assert [line[:5] for line in lines] == ["OK   "] * 7, lines
    assert re.search(r"OK   login: user 'client-cl' logged in at 127\.0\.0\.1:\d+ over TLSv1\.[23]",
                     result.stdout)
    assert re.search(r"OK   workers: [1-9]\d* consuming queue 'celery'", result.stdout)
    assert config.load(client_etc, env={}).broker.password not in result.stdout


def client_channel(client_etc):
    return broker.connect(config.load(client_etc, env={})).channel()


@pytest.mark.parametrize("attempt", [
    "consume the task queue", "get from the task queue", "purge the task queue",
    "delete the task queue", "declare a queue", "declare an exchange",
    "publish to the workers' control exchange", "publish to the default exchange",
])
def test_the_client_account_cannot_touch_what_is_not_its_to_touch(fleet, start_worker,
                                                                   attempt):
    node, worker_etc, client_etc = fleet
    start_worker(worker_etc)  # the task queue and control exchange exist
    channel = client_channel(client_etc)
    actions = {
        "consume the task queue": lambda: channel.basic_consume("celery", callback=print),
        "get from the task queue": lambda: channel.basic_get("celery"),
        "purge the task queue": lambda: channel.queue_purge("celery"),
        "delete the task queue": lambda: channel.queue_delete("celery"),
        "declare a queue": lambda: channel.queue_declare("stolen", auto_delete=True),
        "declare an exchange": lambda: channel.exchange_declare("stolen", "fanout"),
        "publish to the workers' control exchange": lambda: channel.basic_publish_confirm(
            amqp.Message(json.dumps({"method": "shutdown"})), exchange="celery.pidbox",
            routing_key=""),
        "publish to the default exchange": lambda: channel.basic_publish_confirm(
            amqp.Message("x"), exchange="", routing_key="celery"),
    }
    with pytest.raises(amqp.exceptions.AccessRefused, match="ACCESS_REFUSED"):
        actions[attempt]()
    # ... and the workers are still there to serve it.
    assert submit(client_etc, "mul", "6", "7").stdout == "42\n"


def test_the_client_account_is_confined_to_its_vhost(fleet):
    node, worker_etc, client_etc = fleet
    node.ctl("add_vhost", "other")
    with pytest.raises(VhostRefused):
        broker.connect(config.load(client_etc, env={}), vhost="other")


def test_an_untrusted_broker_certificate_is_one_line_exit_4_and_the_worker_refuses_to_start(
        fleet, tmp_path, start_worker):
    node, worker_etc, client_etc = fleet
    for etc in (worker_etc, client_etc):
        conf_d = etc.parent / "conf.d"
        conf_d.mkdir(exist_ok=True)
        (conf_d / "90-wrong-name.yaml").write_text("broker:\n  server_name: other.example\n")
    try:
        result = submit(client_etc, "add", "1", "1")
        assert result.returncode == 4 and result.stderr.count("\n") == 1, result.stderr
        assert "not trusted for 'other.example'" in result.stderr
        assert "Traceback" not in result.stderr
        with pytest.raises(TlsFailed):
            broker.connect(config.load(client_etc, env={}))
        worker = start_worker(worker_etc, ready=False)
        assert worker.proc.wait(timeout=60) == 4
        assert "not trusted for 'other.example'" in worker.output()
    finally:
        for etc in (worker_etc, client_etc):
            (etc.parent / "conf.d" / "90-wrong-name.yaml").unlink()


def test_plain_amqp_to_the_tls_port_is_a_clear_tls_error(fleet):
    node, worker_etc, client_etc = fleet
    overrides = {("broker", "tls"): False}
    with pytest.raises(BrokerUnreachable) as error:
        broker.connect(config.load(client_etc, env={}, overrides=overrides))
    assert error.value.exit_code == 4


# --- queues and routing, named instances --------------------------------------------------

def test_queues_route_tasks_to_the_instance_that_serves_them(rabbitmq, account, tmp_path,
                                                             start_worker):
    etc = write_config(tmp_path / "etc", rabbitmq, account)
    conf_d = etc.parent / "conf.d"
    conf_d.mkdir()
    # Every worker: queue alpha; instance "beta" (celery-worker@beta): its own queue.
    (conf_d / "10-queues.yaml").write_text("worker:\n  queues: [alpha]\n")
    (conf_d / "@beta.yaml").write_text("worker:\n  queues: [beta]\n  concurrency: 1\n")
    alpha = start_worker(etc)
    beta = start_worker(etc, "--instance", "beta")
    ids = {}
    for queue in ("alpha", "beta", "alpha", "beta"):
        result = submit(etc, "echo", f"to-{queue}", "--queue", queue, "--json")
        outcome = json.loads(result.stdout)
        assert (result.returncode, outcome["result"]) == (0, f"to-{queue}")
        ids.setdefault(queue, []).append(outcome["id"])
    for queue, worker, other in (("alpha", alpha, beta), ("beta", beta, alpha)):
        for task_id in ids[queue]:
            assert task_id in worker.output() and task_id not in other.output()
    assert submit(etc, "add", "1", "1", "--queue", "gamma").returncode == 4


def test_a_broker_that_demands_client_certificates_gets_them_from_cert_and_key_file(
        tmp_path, account):
    ca = tls.ca_files(tmp_path / "ca")
    tls.setup(ca, tmp_path / "rabbitmq", ["127.0.0.1"], group="root")
    client = tmp_path / "client"
    client.mkdir()
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", client / "key.pem",
                    "-out", client / "req.pem", "-subj", "/CN=worker-1"], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", client / "req.pem", "-CA", ca.cert,
                    "-CAkey", ca.key, "-set_serial", "7", "-days", "1", "-out",
                    client / "cert.pem"], check=True, capture_output=True)
    node = RabbitMQ(tmp_path / "node", tls_dir=tmp_path / "rabbitmq" / "tls",
                    client_certificates=True)
    try:
        node.start()
        node.add_account(account["user"], account["password"], account["vhost"])
        etc = tmp_path / "etc" / "celeryd.yaml"
        etc.parent.mkdir()
        etc.write_text(
            f"broker:\n  host: 127.0.0.1\n  port: {node.tls_port}\n  tls: true\n"
            f"  ca_file: {ca.cert}\n  vhost: {account['vhost']}\n  user: {account['user']}\n"
            f"  password: {account['password']}\n")
        with pytest.raises(BrokerUnreachable):  # no client certificate: refused
            broker.connect(config.load(etc, env={}))
        mutual = config.load(etc, env={}, overrides={
            ("broker", "cert_file"): str(client / "cert.pem"),
            ("broker", "key_file"): str(client / "key.pem")})
        broker.connect(mutual).close()
    finally:
        node.close()
