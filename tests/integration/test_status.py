"""celeryd-admin status against a real RabbitMQ and real workers: counts, silent, draining,
queues without consumers, --json, ten nodes in under 2 s, and the broker down."""

import json
import os
import secrets
import signal
import subprocess
import time
import types

import amqp
import pytest

import celeryd_pkg
from celeryd_pkg import broker, config
from celeryd_pkg.admin import fleet
from tests.integration.broker import free_port
from tests.integration.conftest import PYTHON, clean_env, run_module, submit, write_config

pytestmark = pytest.mark.integration

# The whole command, python start-up included, for up to 10 nodes and with one silent (which
# costs the 1 s --timeout): measured 0.3-1.45 s on a 2-core VM.
LIMIT = 2.0


@pytest.fixture(scope="module")
def status_user(rabbitmq):
    user = {"user": f"status-{secrets.token_hex(3)}", "password": secrets.token_urlsafe(24)}
    rabbitmq.ctl("add_user", user["user"], input=user["password"] + "\n")
    return user


@pytest.fixture
def fleet_account(rabbitmq, status_user):
    """A vhost of this test's own: no queue or dead task of another test is in its verdict."""
    vhost = f"status-{secrets.token_hex(4)}"
    rabbitmq.ctl("add_vhost", vhost)
    rabbitmq.ctl("set_permissions", "-p", vhost, status_user["user"], ".*", ".*", ".*")
    return {**status_user, "vhost": vhost}


@pytest.fixture
def fleet_etc(tmp_path, rabbitmq, fleet_account):
    """make(name=None, extra="") writes a config (a worker's, named, with concurrency 1) and
    returns its path; make() is the admin's."""
    def make(name=None, extra=""):
        directory = tmp_path / f"etc-{name or 'admin'}"
        if name:
            extra = f"worker:\n  name: {name}\n  concurrency: 1\n" + extra
        return write_config(directory, rabbitmq, fleet_account, extra)
    return make


@pytest.fixture
def status(tmp_path, fleet_etc):
    """Run celeryd-admin status ARGS with the admin's config and a nodes file of this test's
    own; return (CompletedProcess, seconds it took)."""
    admin_config = fleet_etc()
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"), CELERYD_ROOT=str(tmp_path / "root"))

    def run(*args):
        started = time.monotonic()
        result = run_module("celeryd_pkg.admin", "status", "--config", str(admin_config),
                            *args, env=env)
        took = time.monotonic() - started
        assert "Traceback" not in result.stderr, result.stderr
        return result, took
    run.config = admin_config
    run.env = env
    return run


def as_json(result):
    return json.loads(result.stdout)


def nodes(report):
    return {node["node"]: node for node in report["nodes"]}


def wait_for_totals(status, expected, timeout=15):
    """Ask until the summed succeeded/failed counts are expected (a child counts a task just
    after its result went out); return the last report."""
    deadline = time.monotonic() + timeout
    while True:
        report = as_json(status("--json")[0])
        up = [node for node in report["nodes"] if node["state"] == "up"]
        totals = (sum(node["succeeded"] for node in up), sum(node["failed"] for node in up))
        if totals == expected or time.monotonic() > deadline:
            return report
        time.sleep(0.3)


def test_two_named_workers_answer_with_their_counts_and_every_documented_key(
        status, fleet_etc, start_worker):
    alpha = start_worker(fleet_etc("alpha@fleet"))
    start_worker(fleet_etc("beta@fleet"))
    for _ in range(3):
        assert submit(status.config, "add", "4", "4").stdout == "8\n"
    failed = submit(status.config, "xsum", '["a", 1]')
    assert failed.returncode == 1

    report = wait_for_totals(status, (3, 1))
    assert list(report) == ["verdict", "reasons", "time", "nodes", "queues", "beat"]
    assert (report["verdict"], report["reasons"], report["beat"]) == ("OK", [], None)
    assert sorted(nodes(report)) == ["alpha@fleet", "beta@fleet"]
    for node in report["nodes"]:
        assert set(fleet.REPLY_KEYS) | {"state", "last_seen"} <= set(node)
        assert (node["state"], node["concurrency"], node["queues"], node["draining"]) == (
            "up", 1, ["celery"], False)
        assert node["version"] == celeryd_pkg.__version__ and node["uptime"] >= 0
        assert node["last_seen"] == report["time"] and report["time"].endswith("+00:00")
    assert nodes(report)["alpha@fleet"]["pid"] == alpha.proc.pid
    up = report["nodes"]
    assert sum(node["received"] for node in up) == 4
    assert (sum(node["succeeded"] for node in up), sum(node["failed"] for node in up)) == (3, 1)
    assert report["queues"] == [{"name": "celery", "ready": 0, "unacked": 0, "consumers": 2,
                                 "answering_consumers": 2, "oldest_age": None}]

    text, took = status()
    print(f"\n2 nodes, both known: {took:.2f}s\n{text.stdout}")
    assert text.returncode == 0 and took < LIMIT
    lines = text.stdout.splitlines()
    assert lines[2].split() == ["NODE", "HOST", "STATE", "CONC", "BUSY", "DONE", "FAILED",
                                "UPTIME", "VERSION"]
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert sorted(rows) == ["alpha@fleet", "beta@fleet"]
    assert all(row[2:5] == ["up", "1", "0"] for row in rows.values())
    assert sum(int(row[5]) for row in rows.values()) == 3
    assert sum(int(row[6]) for row in rows.values()) == 1
    assert lines[-1] == "OK"


def test_a_stopped_worker_is_silent_and_degraded_within_2s_and_up_again_after_sigcont(
        status, fleet_etc, start_worker):
    start_worker(fleet_etc("alpha@fleet"))
    beta = start_worker(fleet_etc("beta@fleet"))
    assert status()[0].returncode == 0  # both seen: known from now on
    beta.proc.send_signal(signal.SIGSTOP)
    try:
        result, took = status()
        print(f"\n2 nodes, one stopped: {took:.2f}s\n{result.stdout}")
        assert result.returncode == 1 and took < LIMIT
        verdict = result.stdout.splitlines()[-1]
        assert verdict.startswith("DEGRADED: beta@fleet silent (last seen ")
        assert "consumer" not in verdict  # the silent node explains its consumer
        report = as_json(status("--json")[0])
        beta_entry = nodes(report)["beta@fleet"]
        assert (beta_entry["state"], beta_entry["active"]) == ("silent", None)
        assert beta_entry["last_seen"] < report["time"]
        assert report["queues"][0]["consumers"] == 2
        assert report["queues"][0]["answering_consumers"] == 1

        # Forgotten, it is a consumer that does not answer: still DEGRADED, for that reason.
        forgot = run_module("celeryd_pkg.admin", "status", "--forget", "beta@fleet",
                            env=status.env)
        assert forgot.returncode == 0 and forgot.stdout.startswith("forgot beta@fleet")
        result, took = status()
        assert result.returncode == 1
        assert result.stdout.splitlines()[-1] == (
            "DEGRADED: queue celery: 2 consumers, 1 of them answering (a consumer that does "
            "not answer celeryd_status)")
    finally:
        beta.proc.send_signal(signal.SIGCONT)
    result, took = status()
    assert result.returncode == 0, result.stdout
    assert "beta@fleet" in result.stdout and result.stdout.splitlines()[-1] == "OK"


def test_a_drained_worker_is_draining_and_a_task_waiting_without_consumer_is_degraded(
        rabbitmq, status, fleet_etc, start_worker):
    worker_config = fleet_etc("alpha@fleet")
    start_worker(worker_config)
    drained = run_module("celeryd_pkg.admin", "drain", "--config", str(worker_config),
                         env=clean_env(**rabbitmq.env))
    assert drained.returncode == 0, drained.stderr

    result, _ = status("--json")
    report = as_json(result)
    assert result.returncode == 0, report["reasons"]  # draining is reported, not DEGRADED
    alpha = nodes(report)["alpha@fleet"]
    assert (alpha["state"], alpha["draining"], alpha["queues"]) == ("draining", True, [])
    assert report["queues"][0]["consumers"] == 0

    assert submit(status.config, "echo", "later", "--no-wait").returncode == 0
    result, _ = status()
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == "DEGRADED: queue celery: 1 ready, no consumer"
    assert "alpha@fleet  " in result.stdout and " draining " in result.stdout

    resumed = run_module("celeryd_pkg.admin", "resume", "--config", str(worker_config),
                         env=clean_env(**rabbitmq.env))
    assert resumed.returncode == 0, resumed.stderr
    deadline = time.monotonic() + 15
    while (result := status()[0]).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert result.returncode == 0 and " up " in result.stdout


def test_dead_tasks_and_another_queue_left_without_worker_are_degraded(
        status, fleet_etc, start_worker):
    start_worker(fleet_etc("alpha@fleet"))
    connection = broker.connect(config.load(status.config, env={}))
    try:
        channel = connection.channel()
        for queue in ("celeryd.dead", "reports"):
            channel.queue_declare(queue, durable=True, auto_delete=False)
        for queue in ("celeryd.dead", "reports", "reports"):
            # Confirmed: it returns once the queue holds the message.
            channel.basic_publish_confirm(amqp.Message(b"{}", delivery_mode=2),
                                          routing_key=queue)
        assert broker.queue_depths(connection, ["reports", "nowhere", "celeryd.dead"]) == {
            "reports": (2, 0), "nowhere": None, "celeryd.dead": (1, 0)}
    finally:
        broker.close(connection)
    with open(status.config, "a") as stream:
        stream.write("worker:\n  queues: [celery, reports]\n")
    result, _ = status("--json")
    report = as_json(result)
    assert result.returncode == 1
    assert report["reasons"] == ["queue reports: 2 ready, no consumer",
                                 "1 dead task in celeryd.dead (celeryd-admin dead list)"]
    assert [queue["name"] for queue in report["queues"]] == ["celery", "reports",
                                                              "celeryd.dead"]


def test_ten_workers_answer_in_under_2s(status, fleet_etc, start_worker):
    workers = [start_worker(fleet_etc(f"w{i}@fleet"), ready=False) for i in range(10)]
    for worker in workers:
        worker.wait_for("READY=1", timeout=120)
    first, first_took = status("--json")   # no node known yet: waits the whole timeout
    again, again_took = status("--json")   # all ten known: returns when the tenth answers
    text, text_took = status()
    print(f"\n10 nodes: first {first_took:.2f}s, known {again_took:.2f}s, text "
          f"{text_took:.2f}s\n{text.stdout}")
    for result in (first, again):
        report = as_json(result)
        assert result.returncode == 0, report["reasons"]
        assert sorted(nodes(report)) == [f"w{i}@fleet" for i in range(10)]
        assert report["queues"][0]["consumers"] == 10
    assert first_took < LIMIT and again_took < LIMIT and text_took < LIMIT


def test_broker_down_is_exit_4_and_refused_is_exit_5_with_one_line(tmp_path, rabbitmq,
                                                                   fleet_account):
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    nobody = types.SimpleNamespace(port=free_port())  # a port nothing listens on
    closed = write_config(tmp_path / "down", nobody, fleet_account)
    down = run_module("celeryd_pkg.admin", "status", "--config", str(closed), env=env)
    assert (down.returncode, down.stdout, down.stderr.count("\n")) == (4, "", 1)
    assert down.stderr.startswith("celeryd-admin: cannot connect to broker at 127.0.0.1:")

    refused = write_config(tmp_path / "refused", rabbitmq,
                           {**fleet_account, "password": "not-the-password"})
    result = run_module("celeryd_pkg.admin", "status", "--config", str(refused), env=env)
    assert (result.returncode, result.stdout, result.stderr.count("\n")) == (5, "", 1)
    assert "not-the-password" not in result.stderr
    assert not os.path.exists(tmp_path / "cache")  # nothing remembered from a failed run


def test_watch_redraws_until_ctrl_c_which_exits_0_and_outlives_a_broker_outage(
        tmp_path, status, fleet_account, start_worker, fleet_etc):
    start_worker(fleet_etc("alpha@fleet"))
    nobody = types.SimpleNamespace(port=free_port())
    closed = write_config(tmp_path / "down", nobody, fleet_account)
    for config_file, args in ((status.config, ["--json"]), (closed, [])):
        watching = subprocess.Popen(
            [PYTHON, "-m", "celeryd_pkg.admin", "status", "--config", str(config_file),
             "--watch", "0.5", *args], env=status.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        watching.send_signal(signal.SIGINT)
        out, err = watching.communicate(timeout=30)
        assert (watching.returncode, err) == (0, "")
        rounds = [line for line in out.splitlines() if line]
        assert len(rounds) >= 2, out
        if args:
            assert all(json.loads(line)["verdict"] == "OK" for line in rounds)
        else:  # the broker is away: said each round, and asked again
            assert all(line.startswith("cannot connect to broker at 127.0.0.1:")
                       for line in rounds)
