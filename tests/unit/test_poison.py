"""Poison messages: the delivery count, the copies and what the worker does when a child dies."""

import logging
from collections import defaultdict
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import Celery, signals
from celery.utils.imports import symbol_by_name
from celery.worker.request import Request as CeleryRequest

from celeryd_pkg import config, poison

LOST = "Worker exited prematurely: signal 9 (SIGKILL) Job: 3."
BODY = b'[["first"], {}, {"callbacks": null}]'


class FakeMessage:
    """What poison reads of a kombu (or py-amqp) message."""

    def __init__(self, headers=None, exchange="jobs", routing_key="jobs", **properties):
        self.body = BODY
        self.headers = {"id": "t-1", "task": "shop.grab", **(headers or {})}
        self.properties = {"content_type": "application/json", "content_encoding": "utf-8",
                           "correlation_id": "t-1", "reply_to": "amq.rabbitmq.reply-to.abc",
                           "delivery_mode": 2, "priority": 0,
                           "application_headers": self.headers, **properties}
        self.delivery_info = {"exchange": exchange, "routing_key": routing_key,
                              "delivery_tag": 7, "redelivered": False}


@pytest.mark.parametrize("headers, expected", [
    (None, 1), ({}, 1), ({poison.DELIVERIES: 2}, 2), ({poison.DELIVERIES: "3"}, 3),
    ({poison.DELIVERIES: 0}, 1), ({poison.DELIVERIES: -4}, 1), ({poison.DELIVERIES: "x"}, 1),
    ({poison.DELIVERIES: None}, 1), ({poison.DELIVERIES: [2]}, 1),
])
def test_the_count_is_the_header_or_1(headers, expected):
    assert poison.deliveries(headers) == expected


@pytest.mark.parametrize("text, expected", [
    (LOST, "signal 9 (SIGKILL)"),
    ("Worker exited prematurely: exitcode 139 Job: 12.", "exitcode 139"),
    ("Worker exited prematurely: signal 11 (SIGSEGV).", "signal 11 (SIGSEGV)"),
    ("Could not start worker processes", "Could not start worker processes"),
])
def test_the_reason_names_how_the_child_died(text, expected):
    assert poison.lost_reason(text) == expected


def test_a_requeue_copy_is_the_same_message_counted_once_more():
    message = FakeMessage({poison.DELIVERIES: 1}, expiration="60000")
    copy = poison.requeue_copy(message, 2)
    assert (copy.body, copy.exchange, copy.routing_key) == (BODY, "jobs", "jobs")
    assert copy.properties == {
        "content_type": "application/json", "content_encoding": "utf-8", "correlation_id": "t-1",
        "reply_to": "amq.rabbitmq.reply-to.abc", "priority": 0, "delivery_mode": 2,
        "application_headers": {"id": "t-1", "task": "shop.grab", poison.DELIVERIES: 2}}
    # The original's headers are not changed under Celery's feet.
    assert message.headers[poison.DELIVERIES] == 1


def test_a_copy_is_persistent_even_when_the_original_was_not():
    copy = poison.requeue_copy(FakeMessage(delivery_mode=1, reply_to=None), 2)
    assert copy.properties["delivery_mode"] == 2 and "reply_to" not in copy.properties


def test_a_dead_copy_goes_to_celeryd_dead_saying_why_and_whence():
    now = datetime(2026, 11, 30, 9, 0, 5, 123456, tzinfo=timezone.utc)
    copy = poison.dead_copy(FakeMessage(exchange="", routing_key="jobs"), 3,
                            "worker process lost 3 times: signal 9 (SIGKILL)", "jobs", now)
    assert (copy.body, copy.exchange, copy.routing_key) == (BODY, "", "celeryd.dead")
    assert copy.properties["application_headers"] == {
        "id": "t-1", "task": "shop.grab", "x-celeryd-deliveries": 3,
        "x-celeryd-reason": "worker process lost 3 times: signal 9 (SIGKILL)",
        "x-celeryd-queue": "jobs", "x-celeryd-exchange": "", "x-celeryd-routing-key": "jobs",
        "x-celeryd-dead-at": "2026-11-30T09:00:05+00:00"}


def test_an_origin_copy_goes_back_where_it_came_from_with_a_fresh_count():
    dead = poison.dead_copy(FakeMessage(exchange="jobs", routing_key="jobs.fast"), 3, "lost",
                            "fast")
    dead_message = FakeMessage(dead.properties["application_headers"], exchange="",
                               routing_key="celeryd.dead")
    copy = poison.origin_copy(dead_message)
    assert (copy.body, copy.exchange, copy.routing_key) == (BODY, "jobs", "jobs.fast")
    assert copy.properties["application_headers"] == {"id": "t-1", "task": "shop.grab"}
    assert poison.deliveries(copy.properties["application_headers"]) == 1


class FakeChannel:
    def __init__(self, returns=False):
        self.events = defaultdict(set)
        self.returns = returns
        self.published = []
        self.declared = []

    def basic_publish_confirm(self, message, **kwargs):
        self.published.append((message, kwargs))
        if self.returns:
            for handler in self.events["basic_return"]:
                handler(Exception("NO_ROUTE"), kwargs["exchange"], kwargs["routing_key"],
                        message)

    def queue_declare(self, queue, **kwargs):
        self.declared.append((queue, kwargs))


def test_the_publisher_waits_for_the_confirm_and_routes_mandatorily():
    channel = FakeChannel()
    publisher = poison.Publisher(SimpleNamespace(channel=lambda: channel), 4)
    publisher.declare_dead_queue()
    publisher.publish(poison.requeue_copy(FakeMessage(), 2))
    [(message, kwargs)] = channel.published
    assert kwargs == {"exchange": "jobs", "routing_key": "jobs", "mandatory": True,
                      "confirm_timeout": 4}
    assert message.body == BODY and message.properties["delivery_mode"] == 2
    assert message.headers[poison.DELIVERIES] == 2
    assert channel.declared == [("celeryd.dead", {"durable": True, "auto_delete": False})]


def test_the_publisher_raises_when_the_broker_returns_the_copy():
    channel = FakeChannel(returns=True)
    publisher = poison.Publisher(SimpleNamespace(channel=lambda: channel), 4)
    with pytest.raises(poison.Unroutable, match="no queue for exchange 'jobs' routing key"):
        publisher.publish(poison.requeue_copy(FakeMessage(), 2))


class FakeTask(SimpleNamespace):
    """A task: hashable, as Celery's signals need their sender."""

    __hash__ = object.__hash__


class FakeRequest:
    """A Celery request whose child died, recording what is done with it, in order."""

    def __init__(self, events, headers=None, limit=3, queues=()):
        self.events = events
        self.id, self.name = "t-1", "shop.grab"
        self.args, self.kwargs = ["first"], {}
        self.message = FakeMessage(headers)
        self.store_errors = True
        self._context = {"id": "t-1", "reply_to": "amq.rabbitmq.reply-to.abc"}
        settings = SimpleNamespace(tasks=SimpleNamespace(max_redeliveries=limit))
        app = SimpleNamespace(celeryd_poison=settings,
                              amqp=SimpleNamespace(queues={q.name: q for q in queues}))
        backend = SimpleNamespace(mark_as_failure=lambda task_id, error, **kw: events.append(
            ("failure", task_id, error, kw["store_result"])))
        self.task = FakeTask(app=app, backend=backend)

    def acknowledge(self):
        self.events.append(("ack",))

    def reject(self, requeue=False):
        self.events.append(("reject", requeue))

    def send_event(self, kind, **fields):
        self.events.append((kind,))


@pytest.fixture
def events(monkeypatch):
    """What the handler did, in order; publishing is recorded as ("publish", copy)."""
    done = []
    monkeypatch.setattr(poison, "_publish", lambda settings, copy: done.append(("publish", copy)))
    return done


def lost(request):
    poison.on_worker_lost(request, WorkerLostError(LOST), SimpleNamespace(traceback=""))


@pytest.mark.parametrize("count", [1, 2])
def test_below_the_limit_the_task_is_republished_counted_then_acked(events, caplog, count):
    request = FakeRequest(events, {poison.DELIVERIES: count} if count > 1 else None)
    lost(request)
    assert [event[0] for event in events] == ["publish", "ack"]
    copy = events[0][1]
    assert (copy.exchange, copy.routing_key) == ("jobs", "jobs")
    assert copy.properties["application_headers"][poison.DELIVERIES] == count + 1
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(
        logging.WARNING, f"Task shop.grab[t-1] lost its worker process ({LOST}): "
                         f"delivery {count} of 3, requeued")]


def test_at_the_limit_it_moves_to_celeryd_dead_and_the_result_is_a_failure(events, caplog):
    failures = []

    def on_failure(sender=None, task_id=None, exception=None, **_):
        failures.append((task_id, type(exception).__name__))
    signals.task_failure.connect(on_failure, weak=False)
    try:
        lost(FakeRequest(events, {poison.DELIVERIES: 3}))
    finally:
        signals.task_failure.disconnect(on_failure)
    assert [event[0] for event in events] == ["publish", "ack", "failure", "task-failed"]
    copy = events[0][1]
    headers = copy.properties["application_headers"]
    assert (copy.exchange, copy.routing_key) == ("", "celeryd.dead")
    assert headers[poison.REASON] == "worker process lost 3 times: signal 9 (SIGKILL)"
    assert (headers[poison.DELIVERIES], headers[poison.ORIGIN_QUEUE]) == (3, "jobs")
    _, task_id, error, stored = events[2]
    assert (task_id, type(error), stored) == ("t-1", poison.PoisonMessage, True)
    assert str(error) == ("worker process lost 3 times: signal 9 (SIGKILL); moved to "
                          "celeryd.dead after 3 deliveries (celeryd-admin dead list)")
    assert failures == [("t-1", "PoisonMessage")]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(
        logging.ERROR, f"Task shop.grab[t-1] lost its worker process ({LOST}): "
                       f"delivery 3 of 3, moved to celeryd.dead")]


def test_with_a_limit_of_1_the_first_loss_is_the_last(events):
    lost(FakeRequest(events, limit=1))
    assert events[0][1].routing_key == "celeryd.dead"


def test_the_origin_queue_is_the_one_bound_to_the_exchange_and_routing_key(events):
    from kombu import Exchange, Queue

    queues = [Queue("other", Exchange("jobs"), "other"), Queue("fast", Exchange("jobs"), "jobs")]
    lost(FakeRequest(events, {poison.DELIVERIES: 3}, queues=queues))
    assert events[0][1].properties["application_headers"][poison.ORIGIN_QUEUE] == "fast"


@pytest.mark.parametrize("count", [1, 3])
def test_when_the_copy_cannot_be_stored_the_broker_requeues_the_original(
        monkeypatch, caplog, count):
    events = []

    def refuse(settings, copy):
        raise ConnectionRefusedError("[Errno 111] Connection refused")
    monkeypatch.setattr(poison, "_publish", refuse)
    lost(FakeRequest(events, {poison.DELIVERIES: count}))
    assert events == [("reject", True)]
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"Task shop.grab[t-1] lost its worker process ({LOST}): delivery {count} of 3, "
        f"requeued uncounted: could not publish its copy (ConnectionRefusedError: [Errno 111] "
        f"Connection refused)")


def test_celery_resolves_the_request_class_by_name_to_a_subclass_of_its_own():
    request_class = symbol_by_name("celeryd_pkg.poison:Request")
    assert issubclass(request_class, CeleryRequest)
    assert request_class is poison.Request


def make_request(acks_late=True, reject_on_worker_lost=True, app_configured=True):
    request = poison.Request.__new__(poison.Request)
    app = SimpleNamespace(celeryd_poison=object()) if app_configured else SimpleNamespace()
    request._task = SimpleNamespace(app=app, acks_late=acks_late,
                                    reject_on_worker_lost=reject_on_worker_lost)
    return request


def einfo(error):
    try:
        raise error
    except type(error):
        return ExceptionInfo()


@pytest.fixture
def routed(monkeypatch):
    """Which handler on_failure chose: ["poison"] or ["celery"]."""
    chosen = []
    monkeypatch.setattr(poison, "on_worker_lost", lambda *args: chosen.append("poison"))
    monkeypatch.setattr(CeleryRequest, "on_failure", lambda *args: chosen.append("celery"))
    return chosen


@pytest.mark.parametrize("error, settings, expected", [
    (WorkerLostError(LOST), {}, "poison"),
    (ValueError("task raised"), {}, "celery"),
    (WorkerLostError(LOST), {"acks_late": False}, "celery"),
    (WorkerLostError(LOST), {"reject_on_worker_lost": False}, "celery"),
    (WorkerLostError(LOST), {"app_configured": False}, "celery"),
])
def test_only_a_lost_child_of_a_late_acked_task_is_counted(routed, error, settings, expected):
    make_request(**settings).on_failure(einfo(error))
    assert routed == [expected]


@pytest.mark.parametrize("exit_code", [0, 1])
def test_children_killed_by_a_cold_shutdown_are_not_counted(routed, monkeypatch, exit_code):
    from celery.worker import state

    monkeypatch.setattr(state, "should_terminate", exit_code)
    make_request().on_failure(einfo(WorkerLostError(LOST)))
    assert routed == ["celery"]


def test_an_acknowledged_request_is_left_to_celery(routed):
    request = make_request()
    request.acknowledged = True
    request.on_failure(einfo(WorkerLostError(LOST)))
    assert routed == ["celery"]


def test_install_covers_every_task_but_one_with_a_request_class_of_its_own():
    app = Celery("poison-test", set_as_current=False)

    class Base(app.Task):
        pass

    class OwnRequest(app.Task):
        Request = "somewhere:Special"

    def run():
        return 1

    app.task(name="t.plain", shared=False)(run)
    app.task(name="t.based", base=Base, shared=False)(run)
    app.task(name="t.own", base=OwnRequest, shared=False)(run)
    settings = SimpleNamespace(tasks=SimpleNamespace(max_redeliveries=3))
    poison.install(app, settings)
    assert app.celeryd_poison is settings
    requests = {name: task.Request for name, task in app.tasks.items()}
    assert requests.pop("t.own") == "somewhere:Special"
    assert set(requests.values()) == {"celeryd_pkg.poison:Request"}


def test_the_workers_app_uses_it(tmp_path):
    from celeryd_pkg.app import make_app

    main = tmp_path / "celeryd.yaml"
    main.write_text("tasks:\n  max_redeliveries: 5\n")
    app = make_app(config.load(main, env={}))
    assert app.tasks["celeryd.add"].Request == "celeryd_pkg.poison:Request"
    assert app.celeryd_poison.tasks.max_redeliveries == 5
