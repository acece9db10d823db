"""Poison messages: a task whose pool child dies on every delivery goes to celeryd.dead.

With acks_late and reject_on_worker_lost, Celery requeues a task whose child process died
(OOM kill, segfault): one that kills its child every time would come back forever and hold a
pool slot for good. RabbitMQ's classic queues count no deliveries, and dead-lettering by a
reject needs a policy on every queue (without it the reject drops the message), so the worker
counts them itself: in its main process, a lost child's message is republished (confirmed)
with the header x-celeryd-deliveries one higher, then acked; after tasks.max_redeliveries it is
published to the durable queue celeryd.dead instead, with the reason in x-celeryd-* headers,
and the task's result is a FAILURE. A redelivery the broker makes by itself (the whole worker
or its connection died) does not count. celeryd-admin dead lists, requeues and purges them.
"""

import logging
import re
from collections import namedtuple
from datetime import datetime, timezone

from celeryd_pkg.journal import task_extra

__all__ = ["DEAD_QUEUE", "DELIVERIES", "PoisonMessage", "deliveries", "lost_reason",
           "requeue_copy", "dead_copy", "origin_copy", "Publisher", "Unroutable", "install"]

logger = logging.getLogger("celeryd.poison")

DEAD_QUEUE = "celeryd.dead"
HEADER_PREFIX = "x-celeryd-"
DELIVERIES = "x-celeryd-deliveries"
REASON = "x-celeryd-reason"
ORIGIN_QUEUE = "x-celeryd-queue"
ORIGIN_EXCHANGE = "x-celeryd-exchange"
ORIGIN_ROUTING_KEY = "x-celeryd-routing-key"
DEAD_AT = "x-celeryd-dead-at"
# The message properties a copy keeps (besides its body, headers and persistence).
KEPT_PROPERTIES = ("content_type", "content_encoding", "correlation_id", "reply_to", "priority")

# A message to publish: body bytes, where to, and py-amqp's properties (headers included).
Copy = namedtuple("Copy", "body exchange routing_key properties")


class PoisonMessage(Exception):
    """The task's result when its message went to celeryd.dead: the client learns at once."""


def deliveries(headers):
    """Given a message's headers, return how many deliveries lost their child so far plus
    this one: x-celeryd-deliveries, 1 when absent or not a positive number."""
    try:
        return max(int((headers or {}).get(DELIVERIES, 1)), 1)
    except (TypeError, ValueError):
        return 1


def lost_reason(text):
    """Given a WorkerLostError's text ('Worker exited prematurely: signal 9 (SIGKILL) Job:
    3.'), return how the child died ('signal 9 (SIGKILL)'), else the text itself."""
    match = re.match(r"Worker exited prematurely: (.+?)(?: Job: \d+)?\.?$", text.strip())
    return match.group(1) if match else text.strip()


def _copy(message, headers, exchange, routing_key):
    properties = {key: message.properties[key] for key in KEPT_PROPERTIES
                  if message.properties.get(key) is not None}
    properties.update(application_headers=headers, delivery_mode=2)
    return Copy(message.body, exchange, routing_key, properties)


def requeue_copy(message, count):
    """Given a kombu or py-amqp message, return its copy for the queue it came from, with
    x-celeryd-deliveries = count."""
    info = message.delivery_info
    return _copy(message, {**(message.headers or {}), DELIVERIES: count},
                 info.get("exchange") or "", info.get("routing_key") or "")


def dead_copy(message, count, reason, queue, now=None):
    """Given a message delivered count times, why it dies and the queue it came from, return
    its copy for celeryd.dead with the x-celeryd-* headers saying so."""
    info = message.delivery_info
    headers = {**(message.headers or {}), DELIVERIES: count, REASON: reason,
               ORIGIN_QUEUE: queue, ORIGIN_EXCHANGE: info.get("exchange") or "",
               ORIGIN_ROUTING_KEY: info.get("routing_key") or "",
               DEAD_AT: (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")}
    return _copy(message, headers, "", DEAD_QUEUE)


def origin_copy(dead_message):
    """Given a message read from celeryd.dead, return it for its origin exchange and routing
    key without the x-celeryd-* headers: it starts over with a fresh count."""
    headers = dead_message.headers or {}
    clean = {k: v for k, v in headers.items() if not k.startswith(HEADER_PREFIX)}
    return _copy(dead_message, clean, headers.get(ORIGIN_EXCHANGE, ""),
                 headers.get(ORIGIN_ROUTING_KEY) or headers.get(ORIGIN_QUEUE, ""))


class Unroutable(Exception):
    """The broker returned a published copy: nothing would have stored it."""


class Publisher:
    """A py-amqp channel that publishes copies with publisher confirms and mandatory routing:
    publish() returns only once the broker has stored the copy, else raises."""

    def __init__(self, connection, timeout):
        self.channel = connection.channel()
        self.timeout = timeout
        self.returned = []
        self.channel.events["basic_return"].add(
            lambda error, exchange, routing_key, message: self.returned.append(error))

    def declare_dead_queue(self):
        self.channel.queue_declare(DEAD_QUEUE, durable=True, auto_delete=False)

    def publish(self, copy):
        import amqp

        self.returned.clear()
        self.channel.basic_publish_confirm(
            amqp.Message(copy.body, **copy.properties), exchange=copy.exchange,
            routing_key=copy.routing_key, mandatory=True, confirm_timeout=self.timeout)
        if self.returned:
            raise Unroutable(f"no queue for exchange '{copy.exchange}' routing key "
                             f"'{copy.routing_key}': {self.returned[0]}")


def install(app, config):
    """Make every task of the worker's app (built-ins, the operator's, whatever their base
    class) use Request, with config's tasks.max_redeliveries."""
    app.celeryd_poison = config
    default = "celery.worker.request:Request"
    for task in app.tasks.values():
        if task.Request == default:
            task.Request = f"{__name__}:Request"


def _origin_queue(app, exchange, routing_key):
    """Return the name of the worker's queue bound to exchange with routing_key."""
    for queue in app.amqp.queues.values():
        if queue.exchange is not None and queue.exchange.name == exchange \
                and queue.routing_key == routing_key:
            return queue.name
    return routing_key


def _publish(config, copy):
    """Publish copy confirmed on a connection of its own (the pooled ones serve results)."""
    from celeryd_pkg import broker

    connection = broker.connect(config)
    try:
        publisher = Publisher(connection, config.broker.connect_timeout)
        if copy.routing_key == DEAD_QUEUE and not copy.exchange:
            publisher.declare_dead_queue()
        publisher.publish(copy)
    finally:
        broker.close(connection)


def on_worker_lost(request, error, exc_info):
    """Handle a request whose child died (main process): republish it counted, or move it to
    celeryd.dead after tasks.max_redeliveries; ack the original only once the copy is stored,
    else let the broker requeue it. Publishing blocks the worker's event loop for the few
    milliseconds of a connect and a confirm; children dying is rare enough for that."""
    from celery import signals
    from celery.worker import state

    state.task_ready(request)
    config = request.task.app.celeryd_poison
    limit = config.tasks.max_redeliveries
    message = request.message
    count = deliveries(message.headers)
    label = f"Task {request.name}[{request.id}] lost its worker process ({error})"
    # Journal fields (celeryd_pkg.journal): requeued is Celery's REJECTED, requeued.
    requeued = task_extra(request.id, request.name, "REJECTED")
    if count < limit:
        copy, outcome = requeue_copy(message, count + 1), "requeued"
    else:
        info = message.delivery_info
        queue = _origin_queue(request.task.app, info.get("exchange"), info.get("routing_key"))
        reason = f"worker process lost {count} times: {lost_reason(str(error))}"
        copy, outcome = dead_copy(message, count, reason, queue), f"moved to {DEAD_QUEUE}"
    try:
        _publish(config, copy)
    except Exception as failure:  # noqa: BLE001 - whatever failed, the broker keeps the task
        logger.error("%s: delivery %d of %d, requeued uncounted: could not publish its copy "
                     "(%s: %s)", label, count, limit, type(failure).__name__, failure,
                     extra=requeued)
        request.reject(requeue=True)
        return
    request.acknowledge()
    if count < limit:
        logger.warning("%s: delivery %d of %d, %s", label, count, limit, outcome,
                       extra=requeued)
        return
    logger.error("%s: delivery %d of %d, %s", label, count, limit, outcome,
                 extra=task_extra(request.id, request.name, "FAILURE"))
    failure = PoisonMessage(
        f"{reason}; moved to {DEAD_QUEUE} after {count} deliveries (celeryd-admin dead list)")
    request.task.backend.mark_as_failure(request.id, failure, request=request._context,
                                         store_result=request.store_errors)
    signals.task_failure.send(sender=request.task, task_id=request.id, exception=failure,
                              args=request.args, kwargs=request.kwargs,
                              traceback=exc_info.traceback, einfo=exc_info)
    request.send_event("task-failed", exception=repr(failure), traceback="")


def _request_class():
    from billiard.einfo import ExceptionWithTraceback
    from billiard.exceptions import WorkerLostError
    from celery.worker import state
    from celery.worker.request import Request as CeleryRequest

    class Request(CeleryRequest):
        """Celery's request; a lost child's message is counted (on_worker_lost), unless the
        worker itself is going down (a cold shutdown kills the children too)."""

        def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
            error = exc_info.exception
            if isinstance(error, ExceptionWithTraceback):
                error = error.exc
            if isinstance(error, WorkerLostError) and self._counts_lost_children():
                return on_worker_lost(self, error, exc_info)
            return super().on_failure(exc_info, send_failed_event, return_ok)

        def _counts_lost_children(self):
            """True where Celery would requeue the message of a lost child."""
            # A cold shutdown sets should_terminate to its exit code, 0 included.
            terminating = state.should_terminate is not None \
                and state.should_terminate is not False
            return (self.task.acks_late and self.task.reject_on_worker_lost
                    and not self.acknowledged and not terminating
                    and getattr(self.task.app, "celeryd_poison", None) is not None)

    Request.__qualname__ = "Request"
    return Request


def __getattr__(name):
    """Build Request on first use (Celery resolves 'celeryd_pkg.poison:Request' in the
    worker): celery.worker takes a fifth of a second to import, and celeryd-admin dead needs
    only the copies and the Publisher above."""
    if name != "Request":
        raise AttributeError(name)
    globals()["Request"] = _request_class()
    return globals()["Request"]
