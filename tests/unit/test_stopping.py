"""The gentle stop's decisions: when a stop waits for the tasks received, and when it does not.
The real thing (a SIGTERM right after a result, 10 times, no message left) is in
tests/integration/test_worker.py."""

import os
from types import SimpleNamespace

import pytest
from celery.worker import state

from celeryd_pkg.stopping import GentleStop


class Timer:
    def __init__(self):
        self.entries = []

    def call_repeatedly(self, seconds, callback):
        entry = SimpleNamespace(seconds=seconds, callback=callback, cancelled=False)
        entry.cancel = lambda: setattr(entry, "cancelled", True)
        self.entries.append(entry)
        return entry


class Consumer:
    def __init__(self):
        self.readers = {}
        self.hub = SimpleNamespace(add_reader=self.readers.__setitem__)
        self.timer = Timer()
        self.cancelled = []

    def cancel_task_queue(self, queue):
        self.cancelled.append(queue)


class Request:  # state.reserved_requests is a WeakSet: anything with a weak reference
    pass


@pytest.fixture
def gentle():
    monitor = SimpleNamespace(connected=True, reloading=False, finishing=False,
                              consumed_queues=lambda: ["celery", "mail"])
    stop = GentleStop(monitor)
    yield stop
    os.close(stop._wake_read)
    os.close(stop._wake_write)
    state.reserved_requests.clear()


def stops(calls):
    return lambda: calls.append("stop")


def woken(stop, consumer):
    """Run what the event loop runs when the wake-up byte is readable."""
    assert os.read(stop._wake_read, 1) == b"."
    os.write(stop._wake_write, b".")
    consumer.readers[stop._wake_read]()


def test_before_the_consumer_runs_a_stop_is_celerys_at_once(gentle):
    calls = []
    gentle.request(stops(calls))
    assert calls == ["stop"]


def test_without_a_broker_nothing_can_be_acknowledged_so_the_stop_is_at_once(gentle):
    gentle.attach(Consumer())
    gentle.monitor.connected = False
    calls = []
    gentle.request(stops(calls))
    assert calls == ["stop"]


def test_a_stop_takes_no_new_tasks_and_waits_until_no_received_task_is_left(gentle):
    consumer = Consumer()
    gentle.attach(consumer)
    running = Request()
    state.reserved_requests.add(running)
    calls = []
    gentle.request(stops(calls))
    assert calls == []  # the signal handler only wakes the loop
    woken(gentle, consumer)
    assert consumer.cancelled == ["celery", "mail"] and gentle.monitor.finishing
    check, = consumer.timer.entries
    check.callback()
    assert calls == []
    state.reserved_requests.discard(running)  # acknowledged
    check.callback()
    assert calls == ["stop"] and check.cancelled
    check.callback()
    assert calls == ["stop"]  # once


def test_nothing_in_flight_stops_as_soon_as_the_loop_wakes(gentle):
    consumer = Consumer()
    gentle.attach(consumer)
    calls = []
    gentle.request(stops(calls))
    woken(gentle, consumer)
    assert calls == ["stop"]


def test_a_second_signal_goes_to_celery_at_once_and_the_first_is_dropped(gentle):
    consumer = Consumer()
    gentle.attach(consumer)
    state.reserved_requests.add(running := Request())
    first, second = [], []
    gentle.request(stops(first))
    woken(gentle, consumer)
    gentle.request(stops(second))
    assert (first, second) == ([], ["stop"])
    state.reserved_requests.discard(running)
    consumer.timer.entries[0].callback()
    assert first == []
    later = []
    gentle.request(stops(later))  # after the stop began: straight to Celery
    assert later == ["stop"]


def test_a_lost_connection_while_finishing_stops_at_once(gentle):
    consumer = Consumer()
    gentle.attach(consumer)
    state.reserved_requests.add(Request())
    calls = []
    gentle.request(stops(calls))
    gentle.connection_lost()
    assert calls == ["stop"]
    gentle.connection_lost()
    assert calls == ["stop"]


def test_wrap_puts_the_gentle_stop_in_front_of_celerys_handler(gentle):
    seen = []
    signals = {"SIGTERM": lambda signum, frame: seen.append((signum, frame))}
    gentle.wrap(signals, "SIGTERM")
    signals["SIGTERM"](15, None)  # not consuming yet: Celery's handler, with its arguments
    assert seen == [(15, None)]
