"""Tell systemd the worker's state: READY=1 once consuming, STATUS=, WATCHDOG=1, STOPPING=1."""

import threading
import time

from celery import bootsteps
from celery.worker import state

__all__ = ["Monitor", "Readiness", "consumed_queues"]

# How often the event loop proves it is alive, and STATUS= is refreshed, at most.
TICK_SECONDS = 1.0


class Monitor:
    """The worker's health as systemd should see it, shared by the bootstep and the pinger."""

    def __init__(self, config, notifier, clock=time.monotonic):
        self.config = config
        self.notifier = notifier
        self.clock = clock
        self.ready_sent = False
        self.reloading = False
        self.finishing = False  # a stop is waiting for the tasks in flight (stopping.py)
        self.connected = False
        self.lost_since = clock()
        self.last_tick = clock()
        self._last_status = None
        self._pinger = None
        self.consumer = None  # Celery's Consumer, once the bootstep starts

    # -- state changes, called from the consumer bootstep in the main process --
    def waiting(self):
        self.notifier.status(f"Waiting for broker {self.config.broker_url()}")

    def consuming(self):
        self.connected = True
        self.last_tick = self.clock()
        if self.ready_sent:
            self.notifier.status(self.status_line())
        else:
            self.ready_sent = True
            self.notifier.ready(self.status_line())

    def connection_lost(self):
        if self.connected:
            self.connected = False
            self.lost_since = self.clock()
        if not self.reloading:
            self.notifier.status(f"Broker connection lost; reconnecting to "
                                 f"{self.config.broker_url()}")

    def stopping(self):
        # A reload re-executes us: systemd must see RELOADING=1, not STOPPING=1.
        if not self.reloading:
            self.notifier.stopping()

    def tick(self):
        """Called from the event loop: mark it alive and refresh STATUS= when it changed."""
        self.last_tick = self.clock()
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    def status_line(self):
        active = len(state.active_requests)
        done = max(state.all_total_count[0] - active, 0)
        counts = f"{done} tasks done, {active} in flight"
        if self.finishing:
            return f"{'Reloading' if self.reloading else 'Stopping'}: taking no new tasks; {counts}"
        queues = self.consumed_queues()
        if not queues:
            return f"Draining: taking no new tasks (celeryd-admin resume); {counts}"
        return (f"Consuming from {', '.join(queues)} on {self.config.broker_url()}; "
                f"concurrency {self.config.worker.concurrency}; {counts}")

    def consumed_queues(self):
        """The queues really consumed now: fewer than configured after a drain."""
        return consumed_queues(self.consumer, self.config.worker.queues)

    # -- the watchdog --
    def healthy(self):
        """Return True when a WATCHDOG=1 ping is deserved: the event loop ticked recently, or
        the broker is away for less than the grace period (reconnecting is not a hang)."""
        now = self.clock()
        if self.connected:
            return now - self.last_tick <= max(self.notifier.watchdog_seconds / 2, 3 * TICK_SECONDS)
        return now - self.lost_since <= self.config.worker.broker_lost_grace

    def start_pinger(self):
        """Ping the watchdog from a daemon thread, at a quarter of WatchdogSec, while healthy."""
        if not self.notifier.watchdog_seconds or self._pinger is not None:
            return
        interval = self.notifier.watchdog_seconds / 4

        def run():
            while True:
                if self.healthy():
                    self.notifier.watchdog()
                time.sleep(interval)

        self._pinger = threading.Thread(target=run, name="celeryd-watchdog", daemon=True)
        self._pinger.start()


def consumed_queues(consumer, configured):
    """The queues Celery's consumer takes tasks from now (configured until it has started)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return list(configured)
    return [queue.name for queue in task_consumer.queues]


class Readiness(bootsteps.StartStopStep):
    """Consumer bootstep: READY=1 once the task consumer exists, STOPPING=1 at shutdown."""

    # After Control too: READY=1 also means the worker answers remote control. Without it
    # Celery starts this step before the pidbox queue is bound, and a broadcast sent right
    # after READY=1 (celeryd-admin drain, status) is lost.
    requires = ("celery.worker.consumer.tasks:Tasks", "celery.worker.consumer.control:Control")

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.monitor = c.app.celeryd_monitor
        self.tref = None

    def start(self, c):
        self.monitor.consumer = c
        self.monitor.consuming()
        self.tref = c.timer.call_repeatedly(TICK_SECONDS, self.monitor.tick)

    def stop(self, c):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        # The consumer stops its steps both to reconnect and to shut down; only the first
        # means the broker went away.
        if state.should_stop is None and state.should_terminate is None:
            self.monitor.connection_lost()

    def shutdown(self, c):
        self.stop(c)
        self.monitor.stopping()
