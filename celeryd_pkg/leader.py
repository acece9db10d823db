"""Which scheduler leads: an exclusive queue on the broker, held by the leader's connection.

RabbitMQ lets one connection at a time declare an exclusive queue and deletes it when that
connection closes: when the leader exits, crashes, or misses its heartbeats. The leader
publishes on that same connection, with publisher confirms, so a leader that has lost its
connection, and with it the lead, cannot get a task accepted.
"""

import json
import logging
import math

__all__ = ["LOCK_QUEUE", "STATE_QUEUE", "Seat", "NotSent", "read_state", "clean_state",
           "lock_held"]

logger = logging.getLogger(__name__)

LOCK_QUEUE = "celeryd.beat.leader"
# The leader's last word: who leads, since when, the last slot it fired of each entry, and
# whether it let go cleanly. One message at most (the newest), kept across broker restarts.
STATE_QUEUE = "celeryd.beat.state"
STATE_ARGUMENTS = {"x-max-length": 1, "x-overflow": "drop-head"}
# Seconds to wait for the broker to confirm a publish before the lead counts as lost.
CONFIRM_TIMEOUT = 10


class NotSent(Exception):
    """The broker did not take a task: the queue is missing (the lead is kept) or the
    connection failed (the lead is lost: the caller must reconnect)."""

    def __init__(self, reason, lead_lost):
        super().__init__(reason)
        self.reason = reason
        self.lead_lost = lead_lost


class Seat:
    """One scheduler's place on the broker: a py-amqp connection that may take the lead."""

    def __init__(self, connection):
        self.connection = connection
        self.channel = None
        self.leading = False
        self._returned = []

    def try_lead(self):
        """Declare the lock queue exclusively; return True if this connection now leads."""
        import amqp

        if self.leading:
            return True
        channel = self.connection.channel()
        try:
            channel.queue_declare(LOCK_QUEUE, exclusive=True, auto_delete=False)
        except amqp.exceptions.ResourceLocked:
            return False  # the broker closed the channel: another connection holds it
        channel.queue_declare(STATE_QUEUE, durable=True, arguments=STATE_ARGUMENTS)
        channel.confirm_select()
        channel.events["basic_return"].add(self._on_return)
        self.channel, self.leading = channel, True
        return True

    def publish(self, queue, body, properties):
        """Publish a message to queue through the default exchange and wait for the broker's
        confirm. Raise NotSent."""
        import amqp

        if not self.leading:
            raise NotSent("this scheduler does not lead", lead_lost=True)
        self._returned.clear()
        try:
            self.channel.basic_publish(amqp.Message(body, **properties), exchange="",
                                       routing_key=queue, mandatory=True,
                                       confirm_timeout=CONFIRM_TIMEOUT)
        except amqp.exceptions.MessageNacked:
            raise NotSent(f"the broker refused the message to queue '{queue}'",
                          lead_lost=False) from None
        except Exception as error:  # noqa: BLE001 - any failure here ends the lead
            self.leading = False
            raise NotSent(f"{type(error).__name__}: {error}", lead_lost=True) from None
        if self._returned:
            raise NotSent(f"no queue '{queue}': no worker has consumed from it yet",
                          lead_lost=False)

    def publish_state(self, state):
        """Publish the leader's state (a dict) as the one message of the state queue."""
        self.publish(STATE_QUEUE, json.dumps(state, sort_keys=True),
                     {"content_type": "application/json", "delivery_mode": 2})

    def _on_return(self, exc, exchange, routing_key, message):
        self._returned.append(routing_key)


def read_state(connection):
    """Return the last state a leader published (a dict), or None if there is none or it
    cannot be read. The message stays in the queue for the next reader."""
    import amqp

    channel = connection.channel()
    try:
        message = channel.basic_get(STATE_QUEUE, no_ack=False)
        if message is None:
            return None
        channel.basic_reject(message.delivery_tag, requeue=True)
        return clean_state(json.loads(message.body))
    except (amqp.exceptions.NotFound, amqp.exceptions.AccessRefused, ValueError):
        return None
    finally:
        if channel.is_open:
            channel.close()


def clean_state(state):
    """Return a state as read from the broker with "fired" ({entry: time}) and "released"
    (a time or None) made safe to compute with, or None if it is not a mapping: whatever a
    state holds must not stop the next leader."""
    if not isinstance(state, dict):
        return None
    fired, next_slots = state.get("fired"), state.get("next")
    return {**state, "released": state["released"] if is_moment(state.get("released")) else None,
            "fired": {str(name): slot for name, slot in fired.items() if is_moment(slot)}
            if isinstance(fired, dict) else {},
            "next": {str(name): slot for name, slot in next_slots.items() if is_moment(slot)}
            if isinstance(next_slots, dict) else {}}


def is_moment(value):
    """A time as a state records it: a finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def lock_held(connection):
    """Return True if some scheduler leads now: the lock queue exists, owned by another
    connection (a passive declare of it is refused as locked)."""
    import amqp

    channel = connection.channel()
    try:
        channel.queue_declare(LOCK_QUEUE, passive=True)
        return True  # not exclusive to another connection: only if this one leads
    except amqp.exceptions.ResourceLocked:
        return True
    except amqp.exceptions.NotFound:
        return False
    finally:
        if channel.is_open:
            channel.close()
