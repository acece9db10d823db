"""Poison messages against a real RabbitMQ and a real worker: a task that kills its own pool
child is delivered exactly tasks.max_redeliveries times, then waits in celeryd.dead, where
celeryd-admin dead lists, requeues and purges it."""

import json
import re
import secrets
import subprocess
import time

import amqp
import pytest

from celeryd_pkg import broker, config as config_module
from tests.integration.conftest import PYTHON, clean_env, run_module, submit, write_config

pytestmark = pytest.mark.integration

# The operator's module: each run appends its pid to TAG.deliveries; without the flag file
# `fixed` it kills its own child a second later, as the OOM killer or a segfault would.
POISON_TASKS = """\
import os
import time

from celery import shared_task

STATE = {state!r}


@shared_task(name="poison.crash")
def crash(tag):
    with open(os.path.join(STATE, tag + ".deliveries"), "a") as log:
        log.write(f"{{os.getpid()}}\\n")
    if not os.path.exists(os.path.join(STATE, "fixed")):
        time.sleep(1)
        os.kill(os.getpid(), 9)
    with open(os.path.join(STATE, tag + ".done"), "a") as log:
        log.write("done\\n")
    return "survived"
"""
# No 4th delivery in this long after the move: a requeue and a new child take about a second.
QUIET_SECONDS = 6


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, rabbitmq):
    """A vhost of its own (celeryd.dead is per vhost) and a config serving the poison module
    with tasks.max_redeliveries 3: (config file, state directory)."""
    tmp = tmp_path_factory.mktemp("poison")
    suffix = secrets.token_hex(3)
    account = {"user": f"poison-{suffix}", "password": secrets.token_urlsafe(24),
               "vhost": f"poison-{suffix}"}
    rabbitmq.add_account(account["user"], account["password"], account["vhost"])
    code, state = tmp / "code", tmp / "state"
    code.mkdir()
    state.mkdir()
    (code / "poison_tasks.py").write_text(POISON_TASKS.format(state=str(state)))
    config = write_config(tmp / "etc", rabbitmq, account,
                          f"worker:\n  concurrency: 2\n"
                          f"tasks:\n  modules: [poison_tasks]\n  pythonpath: [{code}]\n"
                          f"  max_redeliveries: 3\n")
    return config, state


def dead(config, *args):
    """Run `celeryd-admin dead ARGS` (python3 -m celeryd_pkg.admin) against config."""
    return run_module("celeryd_pkg.admin", "dead", *args, "--config", str(config))


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_the_dead_queue_is_empty_before_any_task_died(deployment):
    config, _ = deployment
    # celeryd.dead is not declared yet in this vhost: nothing to list, not an error.
    listed = dead(config, "list")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "no dead tasks\n", "")
    as_json = dead(config, "list", "--json")
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])


def test_a_poison_task_is_delivered_max_times_then_dead_listed_requeued_and_run_once(
        deployment, start_worker):
    config, state = deployment
    worker = start_worker(config)
    check_poison_task(config, state, worker)


def check_poison_task(config, state, worker):
    started = time.monotonic()
    waiting = subprocess.Popen(
        [PYTHON, "-m", "celeryd_pkg.submit", "--config", str(config), "--json", "--timeout",
         "60", "poison.crash", "first"],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    # The other slot keeps serving while the poison task kills child after child.
    served = 0
    while waiting.poll() is None and time.monotonic() - started < 60:
        result = submit(config, "add", "2", "3", "--timeout", "20")
        assert (result.returncode, result.stdout) == (0, "5\n"), result.stderr
        served += 1
    out, err = waiting.communicate(timeout=60)
    elapsed = time.monotonic() - started
    deliveries = state / "first.deliveries"
    assert served >= 2, (served, lines(deliveries))

    # The waiting client got the failure at once: exit 1 (the task failed), not 6 (timeout).
    assert waiting.returncode == 1, (out, err, worker.output())
    outcome = json.loads(out)
    task_id = outcome["id"]
    assert outcome["state"] == "FAILURE"
    assert outcome["result"]["exc_type"] == "PoisonMessage"
    assert "worker process lost 3 times: signal 9 (SIGKILL)" in err
    assert elapsed < 50, elapsed

    # Exactly three deliveries, each in a child of its own, and no fourth.
    assert len(lines(deliveries)) == 3
    time.sleep(QUIET_SECONDS)
    assert len(lines(deliveries)) == 3
    assert len(set(lines(deliveries))) == 3

    # One line per delivery in the worker's log, naming the task.
    log = worker.output()
    head = (f"Task poison.crash[{task_id}] lost its worker process (Worker exited prematurely: "
            f"signal 9 (SIGKILL)")
    for delivery, outcome_text in ((1, "requeued"), (2, "requeued"),
                                   (3, "moved to celeryd.dead")):
        pattern = re.escape(head) + r"[^)]*\): " + re.escape(
            f"delivery {delivery} of 3, {outcome_text}") + "$"
        assert len(re.findall(pattern, log, re.M)) == 1, (pattern, log)

    # Listed, twice: reading the queue does not consume it.
    for _ in range(2):
        listed = dead(config, "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == [
            line for line in listed.stdout.splitlines() if line.startswith(task_id)]
        [line] = listed.stdout.splitlines()
        assert line.startswith(f"{task_id} poison.crash from queue celery, 3 deliveries, "
                               f"dead at 20"), line
        assert line.endswith(": worker process lost 3 times: signal 9 (SIGKILL)"), line
    [entry] = json.loads(dead(config, "list", "--json").stdout)
    assert (entry["id"], entry["task"], entry["queue"], entry["deliveries"]) == (
        task_id, "poison.crash", "celery", 3)
    assert entry["args"] == "('first',)"

    unknown = dead(config, "requeue", "no-such-id")
    assert unknown.returncode == 2
    assert unknown.stderr == ("celeryd-admin: dead requeue: no task no-such-id in celeryd.dead "
                              "(celeryd-admin dead list)\n")

    # Fixed: requeued, it runs once more and succeeds, exactly once.
    (state / "fixed").write_text("")
    requeued = dead(config, "requeue", task_id)
    assert (requeued.returncode, requeued.stderr) == (0, "")
    assert requeued.stdout == f"requeued poison.crash[{task_id}] to queue celery\n"
    wait_until(lambda: (state / "first.done").exists(), 30, "the requeued task ran")
    time.sleep(QUIET_SECONDS / 2)
    assert lines(state / "first.done") == ["done"]
    assert len(lines(deliveries)) == 4
    assert dead(config, "list").stdout == "no dead tasks\n"
    assert worker.proc.poll() is None


def test_purge_needs_yes_and_empties_the_queue(deployment):
    config, _ = deployment
    settings = config_module.load(config, env={})
    connection = broker.connect(settings)
    try:
        channel = connection.channel()
        channel.queue_declare("celeryd.dead", durable=True, auto_delete=False)
        for number in range(2):
            channel.basic_publish(amqp.Message(b"[[], {}, {}]", application_headers={
                "id": f"purge-{number}", "task": "poison.crash"}), routing_key="celeryd.dead")
    finally:
        connection.close()
    wait_until(lambda: len(dead(config, "list").stdout.splitlines()) == 2, 10,
               "both test messages listed")

    refused = dead(config, "purge")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == ("celeryd-admin: dead purge removes every dead task for good: "
                              "add --yes to confirm\n")
    assert len(dead(config, "list").stdout.splitlines()) == 2

    purged = dead(config, "purge", "--yes")
    assert (purged.returncode, purged.stdout, purged.stderr) == (
        0, "removed 2 dead tasks from celeryd.dead\n", "")
    assert dead(config, "list").stdout == "no dead tasks\n"
