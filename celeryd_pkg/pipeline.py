"""Pipelined, confirmed publishing of many tasks, and their results as they come back.

kombu's confirm_publish waits for each confirm before the next publish (about 650 tasks/s
here); py-amqp can keep many messages in flight while the broker confirms them in batches.
Every message is still confirmed or reported: one channel in confirm mode, up to `window`
unconfirmed, mandatory (an unroutable message comes back), results on RabbitMQ's direct
reply-to on the same channel. Nothing is published twice: after a lost connection every task
not yet finished is reported (UNCONFIRMED, LOST, NOT_SENT), and none is resent.
"""

import json
import socket
import time
import uuid
from collections import OrderedDict, deque

from celeryd_pkg.batch import Outcome
from celeryd_pkg.errors import CelerydError
from celeryd_pkg.protocol import READY_STATES, REPLY_TO, build_message, destination

__all__ = ["Pipeline", "WINDOW", "MAX_PENDING"]

WINDOW = 1000  # messages published and not yet confirmed
MAX_PENDING = 10000  # tasks published whose outcome is not known yet: bounds memory
DRAIN_EVERY = 64  # publishes between two non-blocking reads of acks and results


class _Entry:
    __slots__ = ("index", "task_id", "confirmed", "returned")

    def __init__(self, index, task_id):
        self.index, self.task_id = index, task_id
        self.confirmed = self.returned = False


class Pipeline:
    """Publish tasks on one connection and yield one Outcome for each (run()).

    timeout bounds silence, not each task: a batch waits while confirms and results keep
    arriving (a long queue drains at the workers' pace), and when nothing has arrived for
    timeout seconds every task still pending is reported (TIMEOUT, or UNCONFIRMED)."""

    def __init__(self, config, wait=True, timeout=None, window=WINDOW, max_pending=MAX_PENDING):
        self.config = config
        self.cluster = config.is_cluster()
        self.wait = wait
        # At least a second of silence: a client.timeout of 0 would give up at once.
        self.timeout = max(config.client.timeout if timeout is None else timeout, 1)
        self.window = window
        self.max_pending = max(max_pending, window)
        self.error = None  # the CelerydError that ended the connection, if one did
        self._connection = self._channel = None
        self._pending = {}  # task id -> _Entry, oldest publish first
        self._last_news = time.monotonic()  # when the broker last confirmed or answered
        self._by_tag = OrderedDict()  # delivery tag -> task id, until confirmed
        self._next_tag = 1
        self._done = deque()

    def check_queues(self, queues):
        """Raise BrokerUnreachable (broker.missing_queue) for the first queue whose exchange
        does not exist. A passive declare needs no permission; a failed one closes its
        channel, which is why this runs before the publishing channel is opened."""
        import amqp

        from celeryd_pkg import broker

        self._connect()
        try:
            channel = self._connection.channel()
            for queue in sorted(queues):
                try:
                    channel.exchange_declare(queue, "direct", passive=True)
                except amqp.exceptions.NotFound:
                    raise broker.missing_queue(queue, self.config) from None
            channel.close()
        except CelerydError:
            raise
        except Exception as error:  # noqa: BLE001 - translated, never a traceback
            raise broker.translate(error, self.config) from None

    def run(self, tasks):
        """Given an iterable of (index, Task), publish each and yield its Outcome: as results
        arrive (wait), or as confirms arrive, in input order (no wait)."""
        from celeryd_pkg import broker

        self._connect()
        try:
            self._open_channel()
        except Exception as error:  # noqa: BLE001 - translated, never a traceback
            raise broker.translate(error, self.config) from None
        tasks = iter(tasks)
        published = 0
        for index, task in tasks:
            while self.error is None and (len(self._by_tag) >= self.window
                                          or len(self._pending) >= self.max_pending):
                self._read(blocking=True)
                yield from self._take_done()
            if self.error is not None:
                yield self._not_sent(index)
                break
            self._publish(index, task)
            published += 1
            if published % DRAIN_EVERY == 0:
                self._read(blocking=False)
                yield from self._take_done()
        for index, _task in tasks:  # after a lost connection: the rest was never sent
            yield self._not_sent(index)
        while self._pending and self.error is None:
            self._read(blocking=True)
            yield from self._take_done()
        yield from self._take_done()
        self.close()

    def close(self):
        from celeryd_pkg import broker

        connection, self._connection = self._connection, None
        if connection is not None:
            broker.close(connection)

    def _connect(self):
        from celeryd_pkg import broker

        if self._connection is None:
            self._connection = broker.connect(self.config)

    def _open_channel(self):
        channel = self._connection.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        if self.wait:
            channel.basic_consume(REPLY_TO, no_ack=True, callback=self._on_reply)
        self._channel = channel

    def _publish(self, index, task):
        import amqp

        task_id = str(uuid.uuid4())
        body, properties = build_message(task.name, task.args, task.kwargs, task_id,
                                         REPLY_TO if self.wait else None, task.countdown)
        if self.config.results.backend == "redis":
            # No reply-to, but the worker stores the result for `celery-submit result`.
            properties["application_headers"]["ignore_result"] = False
        if not self._pending:
            self._last_news = time.monotonic()  # silence counts from the first in flight
        exchange, routing_key = destination(task.queue, task.countdown, self.cluster)
        entry = _Entry(index, task_id)
        self._pending[task_id] = entry
        self._by_tag[self._next_tag] = task_id
        self._next_tag += 1
        try:
            # A socket that stopped draining (a partition) fails the write after timeout.
            self._channel.basic_publish(amqp.Message(body, **properties), exchange=exchange,
                                        routing_key=routing_key, mandatory=True,
                                        timeout=self.timeout)
        except Exception as error:  # noqa: BLE001 - every connection failure ends the run
            self._lost(error)

    def _read(self, blocking):
        """Handle what the broker sent: if blocking, wait for it (up to the timeout)."""
        try:
            if blocking:
                wait = self._last_news + self.timeout - time.monotonic()
                if wait > 0:
                    self._connection.drain_events(timeout=min(wait, 1.0))
            while True:
                self._connection.drain_events(timeout=0)
        except socket.timeout:
            pass
        except Exception as error:  # noqa: BLE001 - every connection failure ends the run
            self._lost(error)
            return
        self._expire()

    def _expire(self):
        """After timeout seconds without a confirm or a result, report every pending task."""
        if not self._pending or time.monotonic() - self._last_news < self.timeout:
            return
        silence = f"nothing from the broker for {self.timeout:g}s"
        for entry in self._pending.values():
            if entry.confirmed:
                self._finish(entry, "TIMEOUT", None, f"no result: {silence} (is a worker "
                             f"consuming its queue? celeryd-admin check)")
            else:
                self._finish(entry, "UNCONFIRMED", None, f"no confirm: {silence}")
        self._pending.clear()
        self._by_tag.clear()
        self._last_news = time.monotonic()

    def _on_ack(self, delivery_tag, multiple):
        self._last_news = time.monotonic()
        for entry in self._confirmed(delivery_tag, multiple):
            if entry.returned:
                self._drop(entry, "RETURNED", "unroutable: no queue is bound to exchange "
                           "of that name (celeryd-admin check)")
            elif not self.wait:
                self._drop(entry, "SENT", None)
            else:
                entry.confirmed = True

    def _on_nack(self, delivery_tag, multiple):
        self._last_news = time.monotonic()
        for entry in self._confirmed(delivery_tag, multiple):
            self._drop(entry, "NACKED", "the broker refused to store it (a full queue?)")

    def _on_return(self, exc, exchange, routing_key, message):
        entry = self._pending.get(message.properties.get("correlation_id"))
        if entry is not None:
            entry.returned = True

    def _on_reply(self, message):
        reply = json.loads(message.body)
        if reply.get("status") not in READY_STATES:
            return
        entry = self._pending.pop(message.properties.get("correlation_id"), None)
        if entry is not None:
            self._last_news = time.monotonic()
            # A reply may beat its confirm; the confirm then finds nothing to do.
            self._finish(entry, reply["status"], reply.get("result"), None)

    def _confirmed(self, delivery_tag, multiple):
        """Return the pending entries that delivery_tag settles (with multiple, every tag up
        to it)."""
        tags = self._by_tag
        if multiple:
            settled = []
            while tags and next(iter(tags)) <= delivery_tag:
                settled.append(tags.popitem(last=False)[1])
        else:
            settled = [tags.pop(delivery_tag, None)]
        # A task whose reply beat its confirm is no longer pending.
        return [self._pending[task_id] for task_id in settled if task_id in self._pending]

    def _drop(self, entry, state, error):
        del self._pending[entry.task_id]
        self._finish(entry, state, None, error)

    def _lost(self, error):
        """The connection or channel failed: report every task still pending."""
        from celeryd_pkg import broker

        self.error = error if isinstance(error, CelerydError) else broker.translate(
            error, self.config)
        for entry in self._pending.values():
            state = "LOST" if entry.confirmed else "UNCONFIRMED"
            self._finish(entry, state, None, self.error.message)
        self._pending.clear()
        self._by_tag.clear()
        self.close()

    def _finish(self, entry, state, result, error):
        self._done.append(Outcome(entry.index, entry.task_id, state, result, error))

    def _not_sent(self, index):
        return Outcome(index, None, "NOT_SENT", None, self.error.message)

    def _take_done(self):
        done = self._done
        while done:
            yield done.popleft()
