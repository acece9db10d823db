"""The fleet's periodic tasks, sent by one scheduler at a time (celery-beat.service's loop).

Every host may run one; the one whose connection holds the broker's lock (leader.py) leads,
the others stand by and try again every POLL_SECONDS. Slots are aligned to the clock
(schedule.py), so a new leader knows which slots exist; it fires those after the moment it
took the lead and after the last slot the previous leader recorded, never one before: a
takeover may skip the slots inside its window, it never sends one twice. A leader that let go
cleanly (stop, restart, reload with new broker settings) hands over without a gap.
"""

import logging
import socket
import time

from celeryd_pkg import protocol
from celeryd_pkg.leader import NotSent, Seat, read_state
from celeryd_pkg.schedule import entries_of, task_id
from celeryd_pkg.slots import latest_due

__all__ = ["Scheduler"]

logger = logging.getLogger("celeryd.beat")

POLL_SECONDS = 1.0  # how often a standby tries to take the lead
STATE_EVERY = 10.0  # the leader re-publishes its state at least this often (status reads it)
# A clean hand-over this recent lets the new leader send the slots that fell in between.
CATCH_UP_SECONDS = 60.0
LONGEST_WAIT = 0.5  # the loop's longest sleep: signals and heartbeats are seen this often
STANDBY_STATUS = "Standing by: another scheduler leads (celeryd-admin status names it)"


def shown(moment):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


class Scheduler:
    """The scheduler's loop: connect, lead or stand by, send what is due, re-read on reload."""

    def __init__(self, config, notifier, connect, load, clock=time.time, local_state=None):
        self.config = config
        self.entries = entries_of(config)
        self.notifier = notifier
        self.connect = connect  # config -> a connected amqp.Connection, or raises
        self.load = load  # () -> a new Config, or raises ConfigError
        self.clock = clock
        self.local_state = local_state  # LocalState or None
        self.hostname = socket.gethostname()
        self.seat = None
        self.since = None  # when this scheduler took the lead
        self.last = {}  # entry name -> the last slot sent (or the lead's start)
        self.next = {}  # entry name -> its next slot
        self.state_sent = 0.0
        self.ready_sent = False
        self.stop_requested = False
        self.reload_requested = False
        self._status = None
        self._pinged = 0.0

    # The loop

    def run(self):
        backoff = 1.0
        while not self.stop_requested:
            if self.reload_requested:
                self.reload()
            if self.seat is None:
                if not self._connect():
                    self._sleep(backoff)
                    backoff = min(backoff * 2, 8.0)
                    continue
                backoff = 1.0
            try:
                self.step()
            except NotSent as error:
                self._lost(error.reason)
            except Exception as error:  # noqa: BLE001 - any broker failure: reconnect
                self._lost(f"{type(error).__name__}: {error}")
        self.let_go()

    def step(self):
        """Take the lead if it is free (every POLL_SECONDS), send what is due, then wait for
        the broker's frames until the next thing to do."""
        now = self.clock()
        if not self.seat.leading and now >= self.next_try:
            self.next_try = now + POLL_SECONDS
            if self.seat.try_lead():
                self.took_lead(now)
            else:
                self._say(STANDBY_STATUS)
        if self.seat.leading:
            self.send_due(now)
        wake = min(self.next.values(), default=now + LONGEST_WAIT)
        if not self.seat.leading:
            wake = min(wake, self.next_try)
        self._wait(max(0.0, min(wake - self.clock(), LONGEST_WAIT)))

    def took_lead(self, now):
        """Start leading at now: from the previous leader's state, the slot each entry sends
        next."""
        state = read_state(self.seat.connection) or {}  # made safe by leader.clean_state
        fired = dict(self.local_state.fired() if self.local_state else {})
        for name, slot in state.get("fired", {}).items():
            fired[name] = max(slot, fired.get(name, slot))
        released = state.get("released")
        clean = released is not None and now - released <= CATCH_UP_SECONDS
        self.since = now
        for name in self.entries:
            before = fired.get(name)
            if clean and before is not None:
                # The slots after the old leader's last one, reaching back CATCH_UP_SECONDS
                # at most: an hourly slot that fell inside the hand-over is sent too.
                self.last[name] = max(before, now - CATCH_UP_SECONDS)
            else:
                self.last[name] = max(now, before if before is not None else now)
        self._plan()
        previous = state.get("leader")
        how = ("let go cleanly" if clean else "was lost") if previous else "none on record"
        logger.info("leading since %s (previous leader %s: %s)", shown(now),
                    previous or "-", how)
        self.publish_state(now)

    def send_due(self, now):
        sent = False
        for name, entry in self.entries.items():
            if self.next[name] > now:
                continue
            latest, skipped, first = latest_due(entry.rule, self.last[name], now)
            if latest is None:
                self._plan(name)
                continue
            if skipped:
                logger.warning("%s: skipped %d slots from %s: the scheduler was held up",
                               name, skipped, shown(first))
            self.send(entry, latest)
            self.last[name] = latest
            self._plan(name)
            sent = True
        if sent or now - self.state_sent >= STATE_EVERY:
            self.publish_state(now)
        self._say(self._leading_status())

    def send(self, entry, slot):
        """Publish entry's task for slot and wait for the broker's confirm. A missing queue
        costs this slot only; a failed connection raises NotSent (the lead is lost)."""
        identity = task_id(self.config.broker.vhost, entry.name, slot)
        body, properties = protocol.build_message(entry.task, entry.args, entry.kwargs,
                                                  identity)
        properties["application_headers"].update(beat_entry=entry.name, beat_slot=slot)
        try:
            self.seat.publish(entry.queue, body, properties)
        except NotSent as error:
            if error.lead_lost:
                raise
            logger.error("%s: slot %s not sent: %s", entry.name, shown(slot), error.reason)
            return
        logger.info("%s: sent %s for %s as task %s", entry.name, entry.task, shown(slot),
                    identity)

    def publish_state(self, now, released=None):
        state = {"leader": self.hostname, "since": self.since, "updated": now,
                 "released": released, "heartbeat": self.config.beat.heartbeat,
                 "fired": {name: self.last[name] for name in self.entries},
                 "next": {name: self.next[name] for name in self.entries}}
        self.seat.publish_state(state)
        self.state_sent = now
        if self.local_state:
            self.local_state.save(state)

    def let_go(self, stopping=True):
        """Record a clean hand-over when leading and close the connection; at a stop, tell
        systemd first."""
        if stopping:
            self.notifier.stopping()
        if self.seat is None:
            return
        if self.seat.leading:
            try:
                self.publish_state(self.clock(), released=self.clock())
            except Exception as error:  # noqa: BLE001 - the next leader starts after now
                logger.warning("could not record a clean hand-over: %s", error)
        self._close()

    # Reload

    def reload(self):
        """Re-read the config; keep the old schedule if the new one is bad. Unchanged entries
        keep their slots; new or changed ones start with the next slot from now."""
        self.reload_requested = False
        self.notifier.reloading()
        try:
            config = self.load()
            entries = entries_of(config)
        except Exception as error:  # noqa: BLE001 - a ConfigError, reported as one line
            logger.error("reload refused, the schedule stays as it was: %s",
                         getattr(error, "message", error))
            self._reloaded()
            return
        now = self.clock()
        broker_changed = config.broker.as_dict() != self.config.broker.as_dict() or (
            config.beat.heartbeat != self.config.beat.heartbeat)
        for name, entry in entries.items():
            if self.entries.get(name) != entry:
                self.last[name] = now
        self.last = {name: self.last.get(name, now) for name in entries}
        self.config, self.entries = config, entries
        if self.seat is not None and self.seat.leading:
            self._plan()
        logger.info("reloaded: %d entries", len(entries))
        if broker_changed:
            self.let_go(stopping=False)  # the loop connects again with the new settings
        self._reloaded()

    def _reloaded(self):
        """READY=1 ends a reload; before the first one (still waiting for the broker) it
        would end the start instead, so then only the status is told."""
        if self.ready_sent:
            self.notifier.ready(self._status or "Running")
        elif self._status:
            self.notifier.status(self._status)

    # Helpers

    next_try = 0.0

    def _plan(self, name=None):
        for each in [name] if name else self.entries:
            self.next[each] = self.entries[each].rule.next_slot(self.last[each])
        if name is None:
            self.next = {each: self.next[each] for each in self.entries}

    def _connect(self):
        try:
            connection = self.connect(self.config)
        except Exception as error:  # noqa: BLE001 - a CelerydError, or worse: retry
            self._say(f"Waiting for broker: {getattr(error, 'message', error)}", ready=False)
            return False
        self.seat = Seat(connection)
        self.next_try = 0.0
        return True

    def _lost(self, reason):
        if self.seat is not None and self.seat.leading:
            logger.warning("lost the lead: %s", reason)
        else:
            logger.warning("lost the broker connection: %s", reason)
        self._close()
        self._say(f"Waiting for broker: {reason}", ready=False)

    def _close(self):
        from celeryd_pkg import broker

        if self.seat is not None:
            broker.close(self.seat.connection)
        self.seat, self.next, self.since = None, {}, None

    def _wait(self, timeout):
        """Read the broker's frames for up to timeout seconds, keep the heartbeat going and
        tell the watchdog the loop is alive."""
        try:
            self.seat.connection.drain_events(timeout=timeout)
        except socket.timeout:
            pass
        self.seat.connection.heartbeat_tick()
        self._ping()

    def _sleep(self, seconds):
        end = self.clock() + seconds
        while not self.stop_requested and not self.reload_requested and self.clock() < end:
            time.sleep(min(LONGEST_WAIT, max(0.0, end - self.clock())))
            self._ping()

    def _ping(self):
        if time.monotonic() - self._pinged >= 1.0:
            self.notifier.watchdog()
            self._pinged = time.monotonic()

    def _leading_status(self):
        if not self.entries:
            return f"Leading since {shown(self.since)}: no entries in beat.entries"
        name = min(self.next, key=self.next.get)
        return (f"Leading since {shown(self.since)}: {len(self.entries)} entries, next "
                f"{name} at {shown(self.next[name])}")

    def _say(self, status, ready=True):
        """Send STATUS= when it changed; READY=1 with the first status that leads or stands
        by."""
        if ready and not self.ready_sent:
            self.notifier.ready(status)
            self.ready_sent = True
        elif status != self._status:
            self.notifier.status(status)
        if status != self._status and not status.startswith("Leading"):
            logger.info("%s", status)
        self._status = status
