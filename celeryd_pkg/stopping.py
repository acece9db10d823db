"""A warm stop that loses no acknowledgement: finish inside the event loop, then let Celery stop.

Celery's warm stop (SIGTERM, and celeryd's SIGHUP reload) leaves its event loop at once and
reads the pool's last results while the children exit. A result still in a child's pipe at
that moment is taken for a lost worker: the task had finished, yet its message is requeued
and runs again (celery/celery#3802; measured here: 1 stop in 3 that came within milliseconds
of a result). So the first stop only stops taking tasks; the loop runs on until no received
task is left, each one acknowledged, and then Celery's own handler stops the worker. A second
signal, or a stop while the broker is away (nothing can be acknowledged then), stops at once.
"""

import logging
import os

from celery import bootsteps
from celery.worker import state

__all__ = ["GentleStop", "FinishBeforeStop"]

logger = logging.getLogger("celeryd.worker")

# How often, while finishing, the event loop looks whether anything is left in flight.
CHECK_SECONDS = 0.05


class GentleStop:
    """The pending stop: set in a signal handler, carried out by the event loop."""

    def __init__(self, monitor):
        self.monitor = monitor
        self.consumer = None  # Celery's Consumer, once the bootstep starts
        self.then = None  # what stops the worker once nothing is in flight
        self.done = False  # then() was called: any later signal goes straight to Celery
        self._timer = None
        # A signal handler cannot wake the event loop's poll; a byte on this pipe does.
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wrap(self, signals, name):
        """Put the gentle stop in front of the handler Celery installed for signal name."""
        celery_handler = signals[name]

        def handle(signum, frame):
            self.request(lambda: celery_handler(signum, frame))

        signals[name] = handle

    def request(self, then):
        """Called in a signal handler: finish first, then call then()."""
        if self.then is not None:
            self._finish(then)  # a second signal: Celery's stop at once, not the first one
        elif self.done or self.consumer is None or not self.monitor.connected:
            then()  # not consuming yet, or no broker: nothing to wait for
        else:
            self.then = then
            os.write(self._wake_write, b".")

    # -- in the event loop --
    def attach(self, consumer):
        """The consumer (re)started: listen for the signal's wake-up byte."""
        self.consumer = consumer
        consumer.hub.add_reader(self._wake_read, self._begin)

    def _begin(self):
        try:
            os.read(self._wake_read, 512)
        except BlockingIOError:
            pass
        if self.then is None or self._timer is not None:
            return
        queues = self.monitor.consumed_queues()
        logger.info("%s: taking no new tasks, finishing the %d received",
                    "Reloading" if self.monitor.reloading else "Stopping",
                    len(state.reserved_requests))
        self.monitor.finishing = True
        for queue in queues:
            self.consumer.cancel_task_queue(queue)
        self._timer = self.consumer.timer.call_repeatedly(CHECK_SECONDS, self._check)
        self._check()

    def _check(self):
        # A request leaves reserved_requests in the same callback that acknowledges it.
        if self.then is not None and not state.reserved_requests:
            self._finish(self.then)

    def connection_lost(self):
        """Nothing received can be acknowledged any more (the broker requeues it): stop now."""
        if self.then is not None:
            self._finish(self.then)

    def _finish(self, then):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.then = None
        self.done = True
        then()


class FinishBeforeStop(bootsteps.StartStopStep):
    """Consumer bootstep: hands the running consumer to the worker's GentleStop."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.gentle = c.app.celeryd_gentle_stop

    def start(self, c):
        self.gentle.attach(c)

    def stop(self, c):
        # The consumer stops its steps both to reconnect and to shut down; only the first
        # means the broker went away.
        if state.should_stop is None and state.should_terminate is None:
            self.gentle.connection_lost()
