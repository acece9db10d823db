"""When the worker deserves a watchdog ping, and what it tells systemd."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from celeryd_pkg.monitor import Monitor


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Recorder:
    watchdog_seconds = 10

    def __init__(self):
        self.sent = []

    def __getattr__(self, name):
        return lambda *args: self.sent.append((name, *args))


def monitor(grace=60):
    config = SimpleNamespace(
        worker=SimpleNamespace(queues=["celery"], concurrency=2, broker_lost_grace=grace),
        broker_url=lambda: "amqp://u:***@h:5672/v")
    clock = FakeClock()
    return Monitor(config, Recorder(), clock=clock), clock


def test_a_ticking_loop_is_healthy_and_a_stalled_one_is_not():
    m, clock = monitor()
    m.consuming()
    clock.now += 4
    m.tick()
    assert m.healthy()
    clock.now += 6  # more than half of WatchdogSec without a tick: the loop hangs
    assert not m.healthy()


def test_reconnecting_is_healthy_for_the_grace_period_only():
    m, clock = monitor(grace=60)
    m.consuming()
    m.connection_lost()
    clock.now += 59
    assert m.healthy()
    clock.now += 2
    assert not m.healthy()


def test_ready_is_sent_once_then_reconnects_only_update_status():
    m, _ = monitor()
    m.consuming()
    m.connection_lost()
    m.consuming()
    kinds = [sent[0] for sent in m.notifier.sent]
    assert kinds == ["ready", "status", "status"]


def test_a_reload_is_not_reported_as_stopping():
    m, _ = monitor()
    m.reloading = True
    m.stopping()
    m.connection_lost()
    assert m.notifier.sent == []
    m.reloading = False
    m.stopping()
    assert m.notifier.sent == [("stopping",)]


def test_status_says_draining_when_the_worker_consumes_no_queue():
    m, _ = monitor()
    m.consumer = SimpleNamespace(task_consumer=SimpleNamespace(queues=[]))
    assert m.status_line().startswith("Draining: taking no new tasks (celeryd-admin resume); ")
    m.consumer.task_consumer.queues.append(SimpleNamespace(name="celery"))
    assert m.status_line().startswith("Consuming from celery on ")


def test_status_says_stopping_or_reloading_while_a_stop_finishes_the_tasks_in_flight():
    m, _ = monitor()
    m.consumer = SimpleNamespace(task_consumer=SimpleNamespace(queues=[]))
    m.finishing = True
    assert m.status_line() == "Stopping: taking no new tasks; 0 tasks done, 0 in flight"
    m.reloading = True
    assert m.status_line().startswith("Reloading: taking no new tasks; ")


STEP_ORDER = """
from celery import Celery
from celery.worker.consumer import Consumer
from celeryd_pkg.monitor import Readiness
from celeryd_pkg.stopping import FinishBeforeStop
app = Celery(set_as_current=False)
app.steps["consumer"].add(Readiness)
app.steps["consumer"].add(FinishBeforeStop)
blueprint = Consumer.Blueprint(steps=app.steps["consumer"])
blueprint.steps = {}
print(" ".join(step.name for step in blueprint._finalize_steps(blueprint.claim_steps())))
"""


@pytest.mark.parametrize("hash_seed", ["0", "1", "2", "3", "4"])
def test_ready_is_sent_only_after_the_remote_control_queue_is_consumed(hash_seed):
    # Celery's own step order for the worker's consumer, with celeryd's steps added as
    # worker.py adds them: a broadcast sent on READY=1 must find the pidbox queue bound.
    # Celery sorts steps that do not require each other by string hashes: the order
    # changes from one process to the next, so each seed is a process of its own.
    order = subprocess.run([sys.executable, "-c", STEP_ORDER], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": hash_seed}
                           ).stdout.split()
    assert order.index("celeryd_pkg.monitor.Readiness") > order.index(
        "celery.worker.consumer.control.Control"), order
    assert order.index("celeryd_pkg.monitor.Readiness") > order.index(
        "celery.worker.consumer.tasks.Tasks"), order
