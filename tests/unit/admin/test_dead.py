"""Unit tests: celeryd-admin dead list|requeue|purge, arguments and what each does to the
queue (a fake py-amqp connection stands in for the broker)."""

import json
from collections import defaultdict

import amqp
import pytest

from celeryd_pkg import broker, poison
from celeryd_pkg.admin import cli, dead
from celeryd_pkg.errors import BrokerUnreachable
from tests.unit.admin.conftest import run


def dead_message(task_id, tag, queue="jobs", exchange="jobs", routing_key="jobs"):
    """A message as the worker leaves it in celeryd.dead, delivered with tag."""
    headers = {"id": task_id, "task": "shop.grab", "argsrepr": "('first',)", "kwargsrepr": "{}",
               poison.DELIVERIES: 3, poison.REASON: "worker process lost 3 times: signal 9 "
               "(SIGKILL)", poison.ORIGIN_QUEUE: queue, poison.ORIGIN_EXCHANGE: exchange,
               poison.ORIGIN_ROUTING_KEY: routing_key, poison.DEAD_AT: "2026-11-30T09:00:05+00:00"}
    message = amqp.Message(b'[["first"], {}, {}]', content_type="application/json",
                           content_encoding="utf-8", correlation_id=task_id, delivery_mode=2,
                           application_headers=headers)
    message.delivery_info = {"delivery_tag": tag, "exchange": "", "routing_key": "celeryd.dead"}
    return message


class FakeBroker:
    """celeryd.dead (None: not declared yet) and every call made on its channels, in order."""

    transport = "connected"  # broker.close closes a connection that still has one

    def __init__(self, messages=None, routable=True):
        self.queue = messages
        self.routable = routable
        self.calls = []

    def channel(self):
        return FakeChannel(self)

    def close(self):
        self.calls.append(("connection.close",))


class FakeChannel:
    def __init__(self, broker):
        self.broker = broker
        self.is_open = True
        self.events = defaultdict(set)
        self.fetched = iter(broker.queue or ())

    def _missing(self):
        self.is_open = False  # the broker closes a channel on NOT_FOUND
        raise amqp.exceptions.NotFound("NOT_FOUND - no queue 'celeryd.dead'")

    def queue_declare(self, queue, passive=False, **_):
        assert (queue, passive) == ("celeryd.dead", True)
        if self.broker.queue is None:
            self._missing()

    def basic_get(self, queue, no_ack=True):
        assert (queue, no_ack) == ("celeryd.dead", False)
        return next(self.fetched, None)

    def basic_ack(self, tag):
        self.broker.calls.append(("ack", tag))

    def basic_publish_confirm(self, message, exchange, routing_key, mandatory, confirm_timeout):
        self.broker.calls.append(("publish", exchange, routing_key, message.headers))
        if not self.broker.routable:
            for handler in self.events["basic_return"]:
                handler(Exception("NO_ROUTE"), exchange, routing_key, message)

    def queue_purge(self, queue):
        if self.broker.queue is None:
            self._missing()
        self.broker.calls.append(("purge", queue))
        return len(self.broker.queue)

    def close(self):
        self.is_open = False
        self.broker.calls.append(("channel.close",))


@pytest.fixture
def fake_broker(monkeypatch):
    """Install a FakeBroker as the broker; set its .queue (and .routable) in the test."""
    fake = FakeBroker()
    monkeypatch.setattr(broker, "connect", lambda settings: fake)
    return fake


@pytest.fixture
def config_args(etc):
    return ["--config", str(etc[0])]


@pytest.mark.parametrize("argv, action, extra", [
    (["list"], "list", {"json": False}), (["list", "--json"], "list", {"json": True}),
    (["requeue", "abc-123"], "requeue", {"id": "abc-123"}),
    (["purge", "--yes"], "purge", {"yes": True}),
])
def test_each_action_parses_with_the_config_option(argv, action, extra):
    args = cli.parse_args(["dead", *argv, "--config", "/x/celeryd.yaml"])
    assert (args.command, args.action, args.config) == ("dead", action, "/x/celeryd.yaml")
    assert {key: getattr(args, key) for key in extra} == extra
    assert args.command_spec.action is dead.action_dead


@pytest.mark.parametrize("argv", [["dead"], ["dead", "bogus"], ["dead", "requeue"],
                                  ["dead", "requeue", "a", "b"], ["dead", "list", "--yes"]])
def test_bad_arguments_exit_2_with_one_line(capsys, fake_broker, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("celeryd-admin: ") and err.count("\n") == 1
    assert fake_broker.calls == []


def test_purge_without_yes_exits_2_before_touching_the_broker(capsys, fake_broker, config_args):
    fake_broker.queue = [dead_message("t-1", 1)]
    code, out, err = run(capsys, "dead", "purge", *config_args)
    assert (code, out, fake_broker.calls) == (2, "", [])
    assert err == ("celeryd-admin: dead purge removes every dead task for good: add --yes to "
                   "confirm\n")


@pytest.mark.parametrize("messages", [None, []])
def test_list_with_no_dead_task_or_no_queue_yet_says_so_and_exits_0(
        capsys, fake_broker, config_args, messages):
    fake_broker.queue = messages
    assert run(capsys, "dead", "list", *config_args) == (0, "no dead tasks\n", "")
    assert run(capsys, "dead", "list", "--json", *config_args) == (0, "[]\n", "")


def test_list_prints_one_line_per_dead_task_and_acks_nothing(capsys, fake_broker, config_args):
    fake_broker.queue = [dead_message("t-1", 1), dead_message("t-2", 2, queue="fast")]
    code, out, err = run(capsys, "dead", "list", *config_args)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{task_id} shop.grab from queue {queue}, 3 deliveries, dead at "
        f"2026-11-30T09:00:05+00:00: worker process lost 3 times: signal 9 (SIGKILL)"
        for task_id, queue in (("t-1", "jobs"), ("t-2", "fast"))]
    # Closing the channel is what puts every fetched message back.
    assert fake_broker.calls == [("channel.close",), ("connection.close",)]


def test_list_json_carries_the_arguments_too(capsys, fake_broker, config_args):
    fake_broker.queue = [dead_message("t-1", 1)]
    code, out, _ = run(capsys, "dead", "list", "--json", *config_args)
    assert code == 0
    assert json.loads(out) == [{
        "id": "t-1", "task": "shop.grab", "queue": "jobs", "deliveries": 3,
        "reason": "worker process lost 3 times: signal 9 (SIGKILL)",
        "dead_at": "2026-11-30T09:00:05+00:00", "args": "('first',)", "kwargs": "{}"}]


def test_requeue_publishes_to_the_origin_then_acks_only_that_dead_copy(
        capsys, fake_broker, config_args):
    fake_broker.queue = [dead_message("t-1", 1),
                         dead_message("t-2", 2, queue="fast", routing_key="jobs.fast")]
    code, out, err = run(capsys, "dead", "requeue", "t-2", *config_args)
    assert (code, out, err) == (0, "requeued shop.grab[t-2] to queue fast\n", "")
    publish, ack, *closing = fake_broker.calls
    assert publish[:3] == ("publish", "jobs", "jobs.fast")
    # A fresh start: no x-celeryd-* header, so the count begins again at 1.
    assert publish[3] == {"id": "t-2", "task": "shop.grab", "argsrepr": "('first',)",
                          "kwargsrepr": "{}"}
    assert ack == ("ack", 2)
    assert closing == [("channel.close",), ("connection.close",)]


@pytest.mark.parametrize("messages", [None, [], "one"])
def test_requeue_of_an_unknown_id_exits_2_naming_it(capsys, fake_broker, config_args, messages):
    fake_broker.queue = [dead_message("t-1", 1)] if messages == "one" else messages
    code, out, err = run(capsys, "dead", "requeue", "t-9", *config_args)
    assert (code, out) == (2, "")
    assert err == ("celeryd-admin: dead requeue: no task t-9 in celeryd.dead "
                   "(celeryd-admin dead list)\n")
    assert [call for call in fake_broker.calls if call[0] in ("publish", "ack")] == []


def test_requeue_to_a_queue_that_is_gone_keeps_the_dead_copy_and_exits_4(
        capsys, fake_broker, config_args):
    fake_broker.queue = [dead_message("t-1", 1)]
    fake_broker.routable = False
    code, out, err = run(capsys, "dead", "requeue", "t-1", *config_args)
    assert (code, out) == (4, "")
    assert err == ("celeryd-admin: dead requeue t-1: no queue takes exchange 'jobs' routing key "
                   "'jobs' any more: is a worker consuming it? The task stays in celeryd.dead\n")
    assert [call[0] for call in fake_broker.calls] == [
        "publish", "channel.close", "connection.close"]


@pytest.mark.parametrize("messages, line", [
    (None, "removed 0 dead tasks from celeryd.dead\n"),
    ("one", "removed 1 dead task from celeryd.dead\n"),
    ("two", "removed 2 dead tasks from celeryd.dead\n"),
])
def test_purge_with_yes_removes_them_all_and_counts(capsys, fake_broker, config_args,
                                                    messages, line):
    fake_broker.queue = {None: None, "one": [dead_message("t-1", 1)],
                         "two": [dead_message("t-1", 1), dead_message("t-2", 2)]}[messages]
    assert run(capsys, "dead", "purge", "--yes", *config_args) == (0, line, "")


def test_an_unreachable_broker_is_one_line_and_exit_4(capsys, monkeypatch, config_args):
    def unreachable(settings):
        raise BrokerUnreachable("cannot connect to broker at localhost:5672 (Connection "
                                "refused): is rabbitmq-server running?")
    monkeypatch.setattr(broker, "connect", unreachable)
    code, out, err = run(capsys, "dead", "list", *config_args)
    assert (code, out) == (4, "")
    assert err == ("celeryd-admin: cannot connect to broker at localhost:5672 (Connection "
                   "refused): is rabbitmq-server running?\n")
