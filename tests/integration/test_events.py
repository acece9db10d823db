"""worker.send_events: Celery's task events for Flower and `celery events`, watched with Celery's
own event receiver (app.events.Receiver, what both of them run) against a real worker."""

import json
import queue
import socket
import threading
import time

import pytest
from celery import chain

from celeryd_pkg import config
from celeryd_pkg.app import make_control_app
from tests.integration.conftest import submit, vhost_account, write_config

pytestmark = pytest.mark.integration

NODE = f"celery@{socket.gethostname()}"
TASK_EVENTS = ("task-sent", "task-received", "task-started", "task-succeeded", "task-failed")


@pytest.fixture(scope="module")
def own_account(rabbitmq):
    """A vhost of this module's own: the event exchange sees only this module's workers."""
    return vhost_account(rabbitmq, "celeryd-events")


class Watcher:
    """app.events.Receiver on a thread, its queue bound before anything is sent: every event
    of the vhost, in the order they arrive."""

    def __init__(self, config_file):
        self.app = make_control_app(config.load(str(config_file), env={}))
        self.inbox = queue.Queue()
        self.seen = []
        self.connection = self.app.connection_for_read()
        self.receiver = self.app.events.Receiver(self.connection,
                                                 handlers={"*": self.inbox.put})
        bound = threading.Event()
        self.receiver.on_consume_ready = lambda *_, **__: bound.set()
        # wakeup=False: no `heartbeat` broadcast, the workers speak unasked or not at all.
        self.thread = threading.Thread(target=self.receiver.capture, daemon=True,
                                       kwargs={"wakeup": False})
        self.thread.start()
        assert bound.wait(30), "the event receiver did not start consuming"

    def collect(self, done, timeout):
        """Take events until done(seen) is true or timeout passes; return done(seen)."""
        deadline = time.monotonic() + timeout
        while not done(self.seen) and (remaining := deadline - time.monotonic()) > 0:
            try:
                self.seen.append(self.inbox.get(timeout=remaining))
            except queue.Empty:
                break
        return done(self.seen)

    def of_tasks(self):
        return {(event["type"], event.get("uuid")) for event in self.seen
                if event["type"] in TASK_EVENTS}

    def close(self):
        self.receiver.should_stop = True
        self.thread.join(timeout=10)
        self.connection.release()
        self.app.close()


@pytest.fixture
def watch():
    watchers = []

    def start(config_file):
        watchers.append(Watcher(config_file))
        return watchers[-1]

    yield start
    for watcher in watchers:
        watcher.close()


def run_tasks(config_file, app):
    """An add, a failing xsum (celery-submit --json) and a two-step chain whose second step the
    worker publishes; return their ids: (add, xsum, chain step 1, chain step 2)."""
    added = submit(config_file, "add", "2", "3", "--json")
    assert added.returncode == 0, added.stderr
    failed = submit(config_file, "xsum", '["a", 1]', "--json")
    assert failed.returncode == 1, failed.stderr
    last = chain(app.signature("celeryd.add", (1, 2)), app.signature("celeryd.add", (3,))
                 ).apply_async()
    assert last.get(timeout=30) == 6
    return (json.loads(added.stdout)["id"], json.loads(failed.stdout)["id"], last.parent.id,
            last.id)


def test_send_events_on_the_receiver_sees_every_task_and_the_worker_heartbeat(
        tmp_path, rabbitmq, own_account, start_worker, watch):
    config_file = write_config(tmp_path / "etc", rabbitmq, own_account,
                               "worker:\n  send_events: true\n")
    watcher = watch(config_file)
    start_worker(config_file)
    # Celery's own answer to what Flower sends every 5 s.
    assert watcher.app.control.broadcast("enable_events", reply=True, timeout=5) == [
        {NODE: {"ok": "task events already enabled"}}]
    add, xsum, first, second = run_tasks(config_file, watcher.app)

    expected = {(kind, task) for task in (add, xsum, first, second)
                for kind in ("task-received", "task-started")}
    expected |= {("task-succeeded", add), ("task-failed", xsum), ("task-succeeded", first),
                 ("task-succeeded", second),
                 # The chain's second step is published by the worker's pool child.
                 ("task-sent", second)}
    assert watcher.collect(lambda seen: expected <= watcher.of_tasks(), timeout=15), (
        expected - watcher.of_tasks())
    # celery-submit builds its messages itself and this client app leaves
    # task_send_sent_event off: only the worker's own publish announced itself.
    assert [event["uuid"] for event in watcher.seen if event["type"] == "task-sent"] == [second]

    by_kind = {(event["type"], event.get("uuid")): event for event in watcher.seen}
    received = by_kind[("task-received", add)]
    assert (received["name"], received["hostname"]) == ("celeryd.add", NODE)
    assert by_kind[("task-succeeded", add)]["result"] == "5"
    assert "TypeError" in by_kind[("task-failed", xsum)]["exception"]
    # Flower lists a worker as online from these; Celery sends one every 2 s.
    assert watcher.collect(lambda seen: sum(
        event["type"] == "worker-heartbeat" and event["hostname"] == NODE
        for event in seen) >= 2, timeout=10), [event["type"] for event in watcher.seen]
    assert any(event["type"] == "worker-online" and event["hostname"] == NODE
               for event in watcher.seen)


def test_send_events_off_nothing_arrives_even_when_a_monitor_asks_for_task_events(
        tmp_path, rabbitmq, own_account, start_worker, watch):
    config_file = write_config(tmp_path / "etc", rabbitmq, own_account)
    watcher = watch(config_file)
    worker = start_worker(config_file)
    # What Flower sends every 5 s (and `celery events` at start): the worker says no, logs
    # no traceback, and sends nothing.
    for command in ("enable_events", "heartbeat"):
        replies = watcher.app.control.broadcast(command, reply=True, timeout=5)
        assert replies == [{NODE: {"error": "task events are off in this worker "
                                            "(worker.send_events)"}}], replies
    run_tasks(config_file, watcher.app)
    # A few seconds more while the results came back: a heartbeat would come every 2 s.
    assert not watcher.collect(lambda seen: seen, timeout=4), watcher.seen

    # The receiver is live: an event published now arrives, and is the only one.
    with watcher.app.events.default_dispatcher(hostname="canary@test") as dispatcher:
        dispatcher.send("test-canary")
    assert watcher.collect(lambda seen: seen, timeout=15)
    assert [event["type"] for event in watcher.seen] == ["test-canary"]
    assert worker.proc.poll() is None and "pidbox command error" not in worker.output()
