"""The `celeryd_status` inspect command: one reply per worker for `celeryd-admin status`.

Registered in the worker's remote-control panel by importing this module (make_app does);
callers need no task code: `app.control.broadcast("celeryd_status", reply=True, ...)` from
the control-only app. The counts are tally's, the same ones the metrics endpoint serves.
"""

import os
import socket
import time

import celery
from celery.worker import control
from celery.worker import state as worker_state

from celeryd_pkg import __version__, tally
from celeryd_pkg.monitor import consumed_queues

__all__ = ["COMMAND", "install", "status_reply", "held_by_queue"]

COMMAND = "celeryd_status"


def install(app, config, instance=None):
    """Remember what the reply needs from the config: its queues and the worker's instance."""
    app.celeryd_panel = {"instance": instance,
                         "configured_queues": list(config.worker.queues),
                         "started": time.monotonic()}


@control.inspect_command()
def celeryd_status(state, **_):
    """Return this worker's celeryd status (see status_reply)."""
    return status_reply(state.consumer, state.hostname)


def status_reply(consumer, node):
    """Return the reply for the worker whose Consumer is consumer and node name is node."""
    info = getattr(consumer.app, "celeryd_panel", None) or {
        "instance": None, "configured_queues": [], "started": time.monotonic()}
    consumed = consumed_queues(consumer, info["configured_queues"])
    held = held_requests(consumer)
    return {
        "node": node,
        "host": socket.gethostname(),
        "instance": info["instance"],
        "version": __version__,
        "celery": celery.__version__,
        "pid": os.getpid(),
        "uptime": int(time.monotonic() - info["started"]),
        "concurrency": _concurrency(consumer),
        "queues": consumed,
        "configured_queues": list(info["configured_queues"]),
        "draining": any(queue not in consumed for queue in info["configured_queues"]),
        "active": len(worker_state.active_requests),
        "held": len(held),
        "held_by_queue": held_by_queue(held, info["configured_queues"][:1] or ["celery"]),
        **tally.totals(),
    }


def _concurrency(consumer):
    limit = getattr(getattr(consumer, "pool", None), "limit", None)
    return limit if isinstance(limit, int) else consumer.app.conf.worker_concurrency


def held_requests(consumer):
    """The requests whose message this worker holds unacked: running or waiting for a pool
    slot (Celery's reserved requests), and those waiting for their ETA in the timer."""
    held = {request.id: request for request in list(worker_state.reserved_requests)}
    timer = getattr(consumer, "timer", None)
    queue = getattr(getattr(timer, "schedule", None), "queue", None) or []
    for waiting in list(queue):
        args = getattr(getattr(waiting, "entry", None), "args", None) or ()
        request = args[0] if args else None
        if hasattr(request, "delivery_info"):
            held.setdefault(request.id, request)
    return list(held.values())


def held_by_queue(requests, default):
    """Count requests by the queue they came from: {"celery": 3}."""
    counts = {}
    for request in requests:
        queue = tally.queue_label(getattr(request, "delivery_info", None), default[0])
        counts[queue] = counts.get(queue, 0) + 1
    return counts
