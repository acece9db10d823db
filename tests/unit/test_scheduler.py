"""The scheduler's decisions: which slots a new leader sends after a hand-over or a takeover,
what a held-up leader sends, what it records, and what a reload keeps. A fake clock, a fake
seat on the broker and real configs; the real thing (three schedulers on one RabbitMQ) is in
tests/integration/test_beat.py."""

import json
import logging
import socket

import pytest
import yaml

from celeryd_pkg import config as config_module
from celeryd_pkg import parsecache
from celeryd_pkg import scheduler as module
from celeryd_pkg.beat import LocalState
from celeryd_pkg.leader import NotSent
from celeryd_pkg.schedule import task_id
from celeryd_pkg.scheduler import CATCH_UP_SECONDS, Scheduler, shown

TICK = {"task": "myapp.tick", "every": 10, "queue": "ticks"}


class FakeClock:
    def __init__(self, now=1000.5):
        self.now = now

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class Recorder:
    """The notifier: records ready/status/reloading/stopping/watchdog calls."""

    def __init__(self):
        self.sent = []

    def __getattr__(self, name):
        return lambda *args: self.sent.append((name, *args))

    def told(self):
        return [call for call in self.sent if call[0] != "watchdog"]


class FakeConnection:
    transport = "connected"  # broker.close() closes a connection with a transport

    def __init__(self, clock=None):
        self.clock = clock
        self.timeouts = []
        self.ticks = 0
        self.closed = False

    def drain_events(self, timeout=None):
        self.timeouts.append(timeout)
        if self.clock:
            self.clock.now += timeout
        raise socket.timeout()

    def heartbeat_tick(self):
        self.ticks += 1

    def close(self):
        self.closed = True

    def collect(self):
        self.closed = True


class FakeSeat:
    """The scheduler's place on the broker: try_lead answers from `answers` (the last one
    repeats); a queue in `refused` raises its NotSent."""

    def __init__(self, connection=None, answers=(True,)):
        self.connection = connection or FakeConnection()
        self.leading = False
        self.answers = list(answers)
        self.attempts = []  # every publish tried, sent or not: (queue, entry, slot)
        self.published = []  # (queue, body, properties) the broker took
        self.states = []
        self.refused = {}

    def try_lead(self):
        self.leading = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return self.leading

    def publish(self, queue, body, properties):
        headers = properties["application_headers"]
        self.attempts.append((queue, headers["beat_entry"], headers["beat_slot"]))
        if queue in self.refused:
            raise self.refused[queue]
        self.published.append((queue, body, properties))

    def publish_state(self, state):
        self.states.append(json.loads(json.dumps(state)))  # as the next leader reads it

    def sent(self, entry=None):
        """The slots sent, [(entry, slot)], or [slot] of one entry."""
        pairs = [(p["application_headers"]["beat_entry"], p["application_headers"]["beat_slot"])
                 for _, _, p in self.published]
        return pairs if entry is None else [slot for name, slot in pairs if name == entry]


@pytest.fixture(autouse=True)
def private_parse_cache(tmp_path, monkeypatch):
    # The tests run as root: the loader's cache must not be written to /var/cache.
    monkeypatch.setattr(parsecache, "PATH", str(tmp_path / "parsed-config.json"))
    monkeypatch.setattr(parsecache, "_entries", None)
    monkeypatch.setattr(parsecache, "_changed", False)


@pytest.fixture
def previous(monkeypatch):
    """The state the previous leader left on the broker (None: there is none)."""
    holder = {"state": None}
    monkeypatch.setattr(module, "read_state", lambda connection: holder["state"])
    return holder


def write_config(path, entries, broker=None, **beat):
    data = {"broker": {"host": "rabbit.example", "user": "beat", "password": "s3cret",
                       **(broker or {})},
            "beat": {"entries": entries, **beat}}
    path.write_text(yaml.safe_dump(data))
    return path


def make(tmp_path, entries, clock=None, local_state=None, **beat):
    path = write_config(tmp_path / "celeryd.yaml", entries, **beat)

    def load():
        return config_module.load(str(path), env={})

    scheduler = Scheduler(load(), Recorder(), connect=None, load=load,
                          clock=clock or FakeClock(), local_state=local_state)
    scheduler.seat = FakeSeat()
    scheduler.config_path = path
    return scheduler


def lead(scheduler, now):
    scheduler.clock.now = now
    scheduler.seat.leading = True
    scheduler.took_lead(now)


# A first leader

def test_a_first_leader_sends_the_slots_after_it_took_the_lead_never_one_before(
        tmp_path, previous):
    s = make(tmp_path, {"tick": {**TICK, "args": [1], "kwargs": {"x": 2}}})
    lead(s, 1000.5)
    s.send_due(1000.5)
    s.send_due(1009.9)
    assert s.seat.attempts == []  # slot 1000 came before the lead
    s.send_due(1010.0)
    s.send_due(1015.0)
    assert s.seat.sent() == [("tick", 1010.0)]
    s.send_due(1021.0)
    assert s.seat.sent("tick") == [1010.0, 1020.0]


def test_each_slot_is_a_celery_protocol_2_message_to_the_entrys_queue_with_a_stable_id(
        tmp_path, previous):
    s = make(tmp_path, {"tick": {**TICK, "args": [1], "kwargs": {"x": 2}},
                        "plain": {"task": "myapp.plain", "every": 10}})
    lead(s, 1000.5)
    s.send_due(1010.0)
    by_entry = {p["application_headers"]["beat_entry"]: (queue, body, p)
                for queue, body, p in s.seat.published}
    queue, body, properties = by_entry["tick"]
    headers = properties["application_headers"]
    assert queue == "ticks"
    assert headers["task"] == "myapp.tick"
    assert headers["id"] == task_id("celery", "tick", 1010.0) == properties["correlation_id"]
    assert headers["beat_entry"] == "tick" and headers["beat_slot"] == 1010.0
    assert headers["lang"] == "py" and headers["root_id"] == headers["id"]
    assert json.loads(body)[:2] == [[1], {"x": 2}]
    assert by_entry["plain"][0] == "celery"  # client.queue, the default
    assert by_entry["plain"][2]["application_headers"]["id"] == task_id("celery", "plain",
                                                                        1010.0)
    assert task_id("celery", "tick", 1010.0) != task_id("celery", "tick", 1020.0)


# Taking over from a previous leader

def test_a_clean_hand_over_sends_only_the_latest_slot_after_the_old_leaders_last(
        tmp_path, previous, caplog):
    previous["state"] = {"leader": "old", "released": 1019.5, "fired": {"tick": 1010.0}}
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1031.0)
    with caplog.at_level(logging.INFO, logger="celeryd.beat"):
        s.send_due(1031.0)
    assert s.seat.attempts == [("ticks", "tick", 1030.0)]  # 1020 skipped, 1010 the old one's
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"tick: skipped 1 slots from {shown(1020.0)}: the scheduler was "
                        f"held up"]
    s.send_due(1039.0)
    s.send_due(1040.0)
    assert s.seat.sent("tick") == [1030.0, 1040.0]


def test_a_clean_hand_over_sends_the_one_slot_in_between_without_a_warning(
        tmp_path, previous, caplog):
    previous["state"] = {"leader": "old", "released": 1024.0, "fired": {"tick": 1020.0}}
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1031.0)
    with caplog.at_level(logging.WARNING, logger="celeryd.beat"):
        s.send_due(1031.0)
    assert s.seat.sent("tick") == [1030.0]
    assert caplog.records == []


def test_a_clean_hand_over_across_an_hourly_slot_sends_it(tmp_path, previous):
    # The old leader fired 10:00 and let go at 10:59:59.5; the new one leads at 11:00:05.
    previous["state"] = {"leader": "old", "released": 39599.5, "fired": {"hourly": 36000.0}}
    s = make(tmp_path, {"hourly": {"task": "myapp.hourly", "every": 3600}})
    lead(s, 39605.0)
    s.send_due(39605.0)
    assert s.seat.sent("hourly") == [39600.0]


def test_a_clean_hand_over_reaches_back_catch_up_seconds_at_most(tmp_path, previous):
    # Fired long ago (the old leader's entry differed): no slot older than the window.
    previous["state"] = {"leader": "old", "released": 100000.0, "fired": {"tick": 50000.0}}
    s = make(tmp_path, {"tick": TICK})
    lead(s, 100005.0)
    assert s.last["tick"] == 100005.0 - CATCH_UP_SECONDS
    s.send_due(100005.0)
    assert s.seat.sent("tick") == [100000.0]


def test_a_lost_leaders_successor_starts_at_now_and_skips_the_takeover_window(
        tmp_path, previous):
    previous["state"] = {"leader": "old", "released": None, "fired": {"tick": 1010.0}}
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1031.0)
    s.send_due(1031.0)
    s.send_due(1039.9)
    assert s.seat.attempts == []  # 1020 and 1030 fell inside the takeover
    s.send_due(1040.0)
    assert s.seat.sent("tick") == [1040.0]


def test_after_a_lost_leader_whose_clock_ran_ahead_nothing_up_to_its_fired_slot_is_sent(
        tmp_path, previous):
    previous["state"] = {"leader": "old", "fired": {"tick": 1060.0}}  # no released key
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1031.0)
    assert s.next["tick"] == 1070.0
    for now in (1031.0, 1040.0, 1050.0, 1060.0):
        s.send_due(now)
    assert s.seat.attempts == []
    s.send_due(1070.0)
    assert s.seat.sent("tick") == [1070.0]


def test_a_clean_hand_over_from_a_clock_ahead_also_sends_nothing_up_to_its_fired_slot(
        tmp_path, previous):
    previous["state"] = {"leader": "old", "released": 1030.0, "fired": {"tick": 1060.0}}
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1031.0)
    for now in (1031.0, 1040.0, 1050.0, 1060.0):
        s.send_due(now)
    assert s.seat.attempts == []
    s.send_due(1070.0)
    assert s.seat.sent("tick") == [1070.0]


def test_a_release_older_than_catch_up_seconds_starts_at_now_without_a_catch_up(
        tmp_path, previous):
    now = 1031.0
    previous["state"] = {"leader": "old", "released": now - CATCH_UP_SECONDS - 1,
                         "fired": {"tick": 960.0}}
    s = make(tmp_path, {"tick": TICK})
    lead(s, now)
    s.send_due(now)
    assert s.seat.attempts == []  # not 1030, nor any of 970..1020
    s.send_due(1040.0)
    assert s.seat.sent("tick") == [1040.0]


def test_an_entry_the_previous_leader_did_not_have_starts_at_now(tmp_path, previous):
    previous["state"] = {"leader": "old", "released": 1029.0, "fired": {"other": 1020.0}}
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1031.0)
    s.send_due(1031.0)
    assert s.seat.attempts == []
    assert s.next == {"tick": 1040.0}


# While leading

def test_several_overdue_slots_send_only_the_latest_and_warn_with_the_number_skipped(
        tmp_path, previous, caplog):
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1000.5)
    s.send_due(1010.0)
    with caplog.at_level(logging.WARNING, logger="celeryd.beat"):
        s.send_due(1045.0)  # the clock jumped 35 s: 1020, 1030 and 1040 are due
    assert s.seat.sent("tick") == [1010.0, 1040.0]
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("tick: skipped 2 slots from ")
    assert shown(1020.0) in warning.getMessage()
    s.send_due(1049.9)
    s.send_due(1050.0)
    assert s.seat.sent("tick") == [1010.0, 1040.0, 1050.0]


def test_a_missing_queue_costs_that_slot_only_and_is_logged_naming_the_entry(
        tmp_path, previous, caplog):
    s = make(tmp_path, {"tick": TICK, "other": {"task": "myapp.other", "every": 10}})
    s.seat.refused["ticks"] = NotSent("no queue 'ticks': no worker has consumed from it yet",
                                      lead_lost=False)
    lead(s, 1000.5)
    with caplog.at_level(logging.ERROR, logger="celeryd.beat"):
        s.send_due(1010.0)
    assert s.seat.sent() == [("other", 1010.0)]
    [error] = caplog.records
    assert error.levelno == logging.ERROR
    assert error.getMessage() == (f"tick: slot {shown(1010.0)} not sent: no queue 'ticks': "
                                  f"no worker has consumed from it yet")
    assert s.last["tick"] == 1010.0 and s.next["tick"] == 1020.0
    s.send_due(1015.0)
    assert s.seat.attempts == [("celery", "other", 1010.0), ("ticks", "tick", 1010.0)]
    del s.seat.refused["ticks"]
    s.send_due(1020.0)
    assert s.seat.sent("tick") == [1020.0]  # 1010 is not retried


def test_a_lost_connection_while_sending_propagates_out_of_send_due(tmp_path, previous):
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1000.5)
    s.seat.refused["ticks"] = NotSent("ConnectionResetError: gone", lead_lost=True)
    with pytest.raises(NotSent) as info:
        s.send_due(1010.0)
    assert info.value.lead_lost is True
    assert s.last["tick"] == 1000.5  # not recorded as fired


def test_the_state_after_sends_holds_the_last_slot_of_each_entry(tmp_path, previous):
    s = make(tmp_path, {"tick": TICK, "slow": {"task": "myapp.slow", "every": 15}},
             heartbeat=7)
    lead(s, 1000.5)
    s.send_due(1010.0)  # slow's slot 1005 and tick's 1010
    state = s.seat.states[-1]
    assert state["fired"] == {"tick": 1010.0, "slow": 1005.0}
    assert state["next"] == {"tick": 1020.0, "slow": 1020.0}
    assert state["leader"] == socket.gethostname()
    assert state["released"] is None
    assert state["since"] == 1000.5 and state["updated"] == 1010.0
    assert state["heartbeat"] == 7


def test_the_state_is_published_at_the_lead_and_then_every_state_every_seconds(
        tmp_path, previous):
    s = make(tmp_path, {"slow": {"task": "myapp.slow", "every": 3600}})
    lead(s, 1000.5)
    assert [state["updated"] for state in s.seat.states] == [1000.5]
    s.send_due(1005.0)
    s.send_due(1010.0)
    s.send_due(1011.0)
    assert [state["updated"] for state in s.seat.states] == [1000.5, 1011.0]


def test_letting_go_while_leading_records_a_clean_release_and_tells_systemd(
        tmp_path, previous):
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1000.5)
    s.send_due(1010.0)
    connection = s.seat.connection
    seat = s.seat
    s.clock.now = 1012.0
    s.let_go()
    assert seat.states[-1]["released"] == 1012.0
    assert seat.states[-1]["fired"] == {"tick": 1010.0}
    assert s.notifier.told()[-1] == ("stopping",)
    assert connection.closed and s.seat is None


def test_a_standby_letting_go_records_nothing(tmp_path):
    s = make(tmp_path, {"tick": TICK})
    seat = s.seat
    s.let_go()
    assert seat.states == [] and seat.connection.closed
    assert s.notifier.told() == [("stopping",)]


def test_a_clean_release_lets_the_next_leader_continue_without_a_gap(tmp_path, previous):
    old = make(tmp_path, {"tick": TICK})
    lead(old, 1000.5)
    old.send_due(1010.0)
    seat = old.seat
    old.clock.now = 1019.5
    old.let_go()
    previous["state"] = seat.states[-1]
    new = make(tmp_path, {"tick": TICK})
    lead(new, 1024.0)
    new.send_due(1024.0)
    assert seat.sent("tick") + new.seat.sent("tick") == [1010.0, 1020.0]


# Reload

def test_a_reload_keeps_unchanged_entries_and_restarts_changed_and_new_ones(
        tmp_path, previous, caplog):
    s = make(tmp_path, {"keep": {"task": "myapp.keep", "every": 10},
                        "change": {"task": "myapp.change", "every": 10},
                        "drop": {"task": "myapp.drop", "every": 10}})
    lead(s, 1000.5)
    s.send_due(1010.0)
    # Slot 1020 is due but not yet sent when the reload comes (the loop reloads first).
    write_config(s.config_path, {"keep": {"task": "myapp.keep", "every": 10},
                                 "change": {"task": "myapp.change", "every": 20},
                                 "new": {"task": "myapp.new", "every": 10}})
    s.clock.now = 1020.5
    with caplog.at_level(logging.INFO, logger="celeryd.beat"):
        s.reload()
    assert "reloaded: 3 entries" in [r.getMessage() for r in caplog.records]
    assert s.notifier.told()[-2:] == [("reloading",), ("ready", s._status)]
    assert s.next == {"change": 1040.0, "keep": 1020.0, "new": 1030.0}
    assert set(s.last) == {"change", "keep", "new"}
    for now in (1020.5, 1030.0, 1040.0):
        s.send_due(now)
    assert s.seat.sent("keep") == [1010.0, 1020.0, 1030.0, 1040.0]  # none lost or doubled
    assert s.seat.sent("change") == [1010.0, 1040.0]
    assert s.seat.sent("new") == [1030.0, 1040.0]
    assert s.seat.sent("drop") == [1010.0]
    assert set(s.seat.states[-1]["fired"]) == {"change", "keep", "new"}


def test_a_reload_that_changes_only_the_arguments_restarts_the_entry(tmp_path, previous):
    s = make(tmp_path, {"tick": {**TICK, "args": [1]}})
    lead(s, 1000.5)
    s.send_due(1010.0)
    write_config(s.config_path, {"tick": {**TICK, "args": [2]}})
    s.clock.now = 1020.5
    s.reload()
    s.send_due(1020.5)
    s.send_due(1030.0)
    assert s.seat.sent("tick") == [1010.0, 1030.0]
    assert json.loads(s.seat.published[-1][1])[0] == [2]


def test_an_invalid_config_is_refused_in_one_log_line_and_the_schedule_goes_on(
        tmp_path, previous, caplog):
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1000.5)
    s.send_due(1000.5)
    status = s._status
    write_config(s.config_path, {"tick": {**TICK, "every": 0},
                                 "new": {"task": "myapp.new", "every": 5}})
    s.clock.now = 1005.0
    with caplog.at_level(logging.INFO, logger="celeryd.beat"):
        s.reload()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    message = errors[0].getMessage()
    assert message.startswith("reload refused, the schedule stays as it was: ")
    assert "beat.entries.tick.every" in message and "\n" not in message
    assert list(s.entries) == ["tick"] and s.entries["tick"].rule.seconds == 10
    assert s.notifier.told()[-2:] == [("reloading",), ("ready", status)]
    s.send_due(1010.0)
    assert s.seat.sent() == [("tick", 1010.0)]


def test_a_reload_with_new_broker_settings_hands_over_cleanly_and_reconnects(
        tmp_path, previous):
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1000.5)
    s.send_due(1010.0)
    seat = s.seat
    write_config(s.config_path, {"tick": TICK}, broker={"host": "rabbit2.example"})
    s.clock.now = 1012.0
    s.reload()
    assert seat.states[-1]["released"] == 1012.0
    assert seat.states[-1]["fired"] == {"tick": 1010.0}
    assert seat.connection.closed and s.seat is None
    assert s.config.broker.host == "rabbit2.example"
    assert s.notifier.told()[-2:] == [("reloading",), ("ready", s._status)]


# READY=1 and the loop

def run_loop(s, monkeypatch, connect, answers, until):
    """Run the real loop on the fake clock until the clock passes `until`."""
    seats = []

    def seat_of(connection):
        seats.append(FakeSeat(connection, answers))
        return seats[-1]

    monkeypatch.setattr(module, "Seat", seat_of)
    monkeypatch.setattr(module.time, "sleep", s.clock.sleep)
    s.seat = None
    s.connect = connect
    real_wait = s._wait

    def wait(timeout):
        real_wait(timeout)
        if s.clock.now >= until or len(s.clock_steps) > 1000:
            s.stop_requested = True
        s.clock_steps.append(s.clock.now)

    s.clock_steps = []
    s._wait = wait
    s.run()
    return seats


def test_ready_is_sent_once_with_the_first_status_that_stands_by_or_leads(
        tmp_path, previous, monkeypatch):
    clock = FakeClock(1000.0)
    s = make(tmp_path, {"tick": TICK}, clock=clock)
    tries = []

    def connect(config):
        tries.append(clock.now)
        if len(tries) == 1:
            raise ConnectionRefusedError("connection refused")
        return FakeConnection(clock)

    seats = run_loop(s, monkeypatch, connect, answers=[False, False, True], until=1011.0)
    told = s.notifier.told()
    assert [call[0] for call in told] == ["status", "ready", "status", "status", "stopping"]
    assert told[0] == ("status", "Waiting for broker: connection refused")
    assert told[1][1].startswith("Standing by: ")
    assert told[2][1] == (f"Leading since {shown(1003.0)}: 1 entries, next tick at "
                          f"{shown(1010.0)}")
    assert told[3][1].endswith(f"next tick at {shown(1020.0)}")
    assert tries == [1000.0, 1001.0]
    [seat] = seats
    assert seat.sent() == [("tick", 1010.0)]
    assert seat.states[-1]["released"] is not None and seat.connection.closed
    assert seat.connection.ticks > 0
    assert max(seat.connection.timeouts) <= module.LONGEST_WAIT


def test_a_reload_while_waiting_for_the_broker_does_not_send_ready(tmp_path, previous):
    s = make(tmp_path, {"tick": TICK})
    s.seat = None

    def connect(config):
        raise ConnectionRefusedError("refused")

    s.connect = connect
    assert not s._connect()
    s.reload()
    told = s.notifier.told()
    assert "ready" not in [call[0] for call in told]
    s.seat = FakeSeat(answers=[False])
    s.step()
    assert [call[0] for call in s.notifier.told()].count("ready") == 1
    assert s.notifier.told()[-1][0] == "ready"


def test_a_standby_tries_to_lead_once_every_poll_seconds(tmp_path, previous):
    s = make(tmp_path, {"tick": TICK}, clock=FakeClock(1000.0))
    s.seat = FakeSeat(FakeConnection(s.clock), answers=[False])
    tries = []
    real = s.seat.try_lead
    s.seat.try_lead = lambda: tries.append(s.clock.now) or real()
    for _ in range(100):  # bounded: a loop that stops sleeping must fail, not hang
        if s.clock.now >= 1003.0:
            break
        s.step()
    assert tries == [1000.0, 1001.0, 1002.0]
    assert s.seat.published == [] and s.seat.states == []


# The host's own record

def test_a_host_does_not_resend_a_slot_its_own_file_records_beyond_the_brokers_state(
        tmp_path, previous):
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / "beat-state.json").write_text(json.dumps({"fired": {"tick": 1020.0}}))
    # The broker's record lags: it says 1010, this host had sent 1020 before it let go.
    previous["state"] = {"leader": "this", "released": 1021.0, "fired": {"tick": 1010.0}}
    s = make(tmp_path, {"tick": TICK}, local_state=LocalState(str(directory)))
    lead(s, 1025.0)
    s.send_due(1025.0)
    assert s.seat.attempts == []
    s.send_due(1030.0)
    assert s.seat.sent("tick") == [1030.0]
    saved = json.loads((directory / "beat-state.json").read_text())
    assert saved["fired"] == {"tick": 1030.0} and saved["leader"] == socket.gethostname()


def test_without_its_own_file_the_same_hand_over_catches_up_the_slot(tmp_path, previous):
    # The counterpart of the test above: the same broker state alone sends 1020.
    previous["state"] = {"leader": "this", "released": 1021.0, "fired": {"tick": 1010.0}}
    s = make(tmp_path, {"tick": TICK})
    lead(s, 1025.0)
    s.send_due(1025.0)
    assert s.seat.sent("tick") == [1020.0]
