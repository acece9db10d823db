"""The celeryd_status reply: its shape, and what the worker holds, by queue."""

import os
import socket
import types

import celery
import pytest
from celery.worker import control
from celery.worker import state as worker_state

from celeryd_pkg import __version__, panel

KEYS = {"node", "host", "instance", "version", "celery", "pid", "uptime", "concurrency",
        "queues", "configured_queues", "draining", "active", "held", "held_by_queue",
        "received", "succeeded", "failed", "retried"}


class _Request:
    """A stand-in for Celery's Request: kept in sets, so hashable by identity."""

    def __init__(self, task_id, queue):
        self.id = task_id
        self.delivery_info = {"routing_key": queue}


def consumer(consumed, configured, scheduled=(), instance=None, limit=3):
    """A stand-in for Celery's Consumer, enough for status_reply."""
    app = types.SimpleNamespace(conf=types.SimpleNamespace(worker_concurrency=9))
    panel.install(app, types.SimpleNamespace(worker=types.SimpleNamespace(queues=configured)),
                  instance)
    waiting = [types.SimpleNamespace(entry=types.SimpleNamespace(args=(item,)), priority=0)
               for item in scheduled]
    # A timer entry that is not a task (Celery's own periodic calls) is no message held.
    waiting.append(types.SimpleNamespace(entry=types.SimpleNamespace(args=()), priority=0))
    return types.SimpleNamespace(
        app=app, pool=types.SimpleNamespace(limit=limit),
        task_consumer=types.SimpleNamespace(
            queues=[types.SimpleNamespace(name=name) for name in consumed]),
        timer=types.SimpleNamespace(schedule=types.SimpleNamespace(queue=waiting)))


@pytest.fixture
def requests():
    """Put requests in Celery's worker state for one test: (reserved, active)."""
    reserved = [_Request("r1", "celery"), _Request("r2", "mail"), _Request("r3", "mail")]
    active = reserved[:1]
    worker_state.reserved_requests.update(reserved)
    worker_state.active_requests.update(active)
    yield reserved, active
    for item in reserved:
        worker_state.reserved_requests.discard(item)
        worker_state.active_requests.discard(item)


def test_the_command_is_registered_as_an_inspect_command():
    assert control.Panel.data[panel.COMMAND] is panel.celeryd_status
    assert control.Panel.meta[panel.COMMAND].type == "inspect"


def test_the_reply_has_the_contracts_keys_and_values(requests):
    eta = _Request("e1", "mail")
    reply = panel.status_reply(consumer(["celery", "mail"], ["celery", "mail"], [eta],
                                        instance="reports"), "reports@box")
    assert set(reply) == KEYS
    assert reply["node"] == "reports@box"
    assert reply["host"] == socket.gethostname()
    assert reply["instance"] == "reports"
    assert reply["version"] == __version__
    assert reply["celery"] == celery.__version__
    assert reply["pid"] == os.getpid()
    assert isinstance(reply["uptime"], int) and reply["uptime"] >= 0
    assert reply["concurrency"] == 3
    assert reply["queues"] == reply["configured_queues"] == ["celery", "mail"]
    assert reply["draining"] is False
    assert reply["active"] == 1
    # Reserved (the active one included) plus the one waiting for its ETA.
    assert reply["held"] == 4
    assert reply["held_by_queue"] == {"celery": 1, "mail": 3}
    for key in ("received", "succeeded", "failed", "retried"):
        assert isinstance(reply[key], int)


def test_a_worker_that_stopped_consuming_a_configured_queue_is_draining():
    reply = panel.status_reply(consumer(["mail"], ["celery", "mail"]), "celery@box")
    assert reply["draining"] is True
    assert reply["queues"] == ["mail"]
    assert reply["configured_queues"] == ["celery", "mail"]
    assert reply["instance"] is None
    assert reply["held"] == 0 and reply["held_by_queue"] == {}


def test_a_request_both_reserved_and_scheduled_is_held_once(requests):
    reserved, _ = requests
    reply = panel.status_reply(consumer(["celery"], ["celery"], [reserved[1]]), "celery@box")
    assert reply["held"] == 3


def test_held_by_queue_counts_a_request_without_routing_key_on_the_default_queue():
    bare = types.SimpleNamespace(delivery_info={})
    assert panel.held_by_queue([bare, _Request("a", "mail")], ["jobs"]) == {"jobs": 1,
                                                                          "mail": 1}


def test_the_concurrency_falls_back_to_the_setting_before_the_pool_exists():
    found = consumer(["celery"], ["celery"])
    found.pool = None
    assert panel.status_reply(found, "celery@box")["concurrency"] == 9
