"""The task message on the wire, shared by the client and the worker: names and protocol 2."""

import json
import os
import socket

__all__ = ["NAMESPACE", "REPLY_TO", "READY_STATES", "DELAYED_EXCHANGE", "build_message",
           "destination"]

# Built-in tasks are registered as NAMESPACE + name; celery-submit resolves a bare "add" so.
NAMESPACE = "celeryd."
# RabbitMQ's direct reply-to: results come back without a reply queue to declare.
REPLY_TO = "amq.rabbitmq.reply-to"
# A reply in one of these states is the task's last: its result.
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
# Celery's own cap on the argsrepr/kwargsrepr headers (celery.app.amqp, saferepr(..., 1024)).
DISPLAY_LIMIT = 1024
# The body's last part, the same for every task celeryd sends (no canvas).
EMBED = ', {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'

# Celery 5.5's native delayed delivery, used on a cluster: the head of RabbitMQ's chain of
# delay exchanges, which the workers declare (kombu.transport.native_delayed_delivery).
DELAYED_EXCHANGE = "celery_delayed_27"

# The sender's "pid@hostname", made once per process: build_message runs once per task of a
# batch. Celery, too, reads the host name once (celery.utils.nodenames.gethostname).
_origin = (None, None)


def build_message(task, args, kwargs, task_id, reply_to=None, countdown=None, now=None):
    """Return (body, properties) of a Celery task message, protocol 2, JSON."""
    eta = None
    if countdown:
        from datetime import datetime, timedelta, timezone

        eta = ((now or datetime.now(timezone.utc)) + timedelta(seconds=countdown)).isoformat()
    headers = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": eta, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": task_id, "parent_id": None, "argsrepr": _display(tuple(args)),
        "kwargsrepr": _display(kwargs), "origin": _sender(), "ignore_result": reply_to is None,
    }
    # json.dumps([list(args), kwargs, embed]) with the constant embed written once.
    body = json.dumps([list(args), kwargs])[:-1] + EMBED
    properties = {
        "content_type": "application/json", "content_encoding": "utf-8",
        "correlation_id": task_id, "delivery_mode": 2, "priority": 0, "application_headers": headers,
    }
    if reply_to:
        properties["reply_to"] = reply_to
    return body, properties


def destination(queue, countdown=None, cluster=False):
    """Return (exchange, routing key) that a task for queue is published to: the queue's own
    exchange; on a cluster, a countdown of a second or more goes through the delay exchanges
    instead, as Celery 5.5 sends it (a quorum queue's consumer cannot hold a message back
    without stopping its other tasks). Raise ConfigError where kombu has no delayed delivery."""
    if not (cluster and countdown and countdown >= 1):
        return queue, queue
    try:
        from kombu.transport.native_delayed_delivery import calculate_routing_key
    except ImportError:
        from celeryd_pkg.errors import ConfigError

        raise ConfigError("celery-submit: --countdown on a cluster (broker.hosts) needs "
                          "kombu 5.4's native delayed delivery, which this host lacks "
                          "(Debian 13 has it)") from None
    return DELAYED_EXCHANGE, calculate_routing_key(int(countdown), queue)


def _sender():
    """Return "pid@hostname", the origin header; the pid is checked for forks."""
    global _origin
    pid = os.getpid()
    if _origin[0] != pid:
        _origin = (pid, f"{pid}@{socket.gethostname()}")
    return _origin[1]


def _display(value):
    """Return value's repr for the argsrepr/kwargsrepr headers, capped as Celery caps them: the
    headers travel in one AMQP frame, and an uncapped copy of large arguments would exceed
    RabbitMQ's frame size. Celery is imported only for such large values."""
    text = repr(value)
    if len(text) <= DISPLAY_LIMIT:
        return text
    from celery.utils.saferepr import saferepr

    return saferepr(value, DISPLAY_LIMIT)
