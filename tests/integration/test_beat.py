"""celery-beat's program against a real RabbitMQ: three schedulers on one broker, one leads;
the leader killed, stopped past its heartbeat, stopped cleanly, the broker restarted: every
slot is sent at most once, and only the slots inside a takeover are missing."""

import json
import signal
import socket
import time
from collections import Counter

import amqp
import pytest

from celeryd_pkg.schedule import task_id
from tests.integration.broker import RabbitMQ
from tests.integration.conftest import WorkerProcess, clean_env, run_module

pytestmark = pytest.mark.integration

QUEUE = "beat-ticks"
HEARTBEAT = 2
ACCOUNT = {"user": "beat", "password": "beat-test-pw", "vhost": "beat"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A broker of this module's own: one test restarts it."""
    node = RabbitMQ(tmp_path_factory.mktemp("beat-rabbitmq"))
    try:
        node.start()
        node.add_account(ACCOUNT["user"], ACCOUNT["password"], ACCOUNT["vhost"])
        yield node
    finally:
        node.close()


def connect(node):
    connection = amqp.Connection(host=f"127.0.0.1:{node.port}", userid=ACCOUNT["user"],
                                 password=ACCOUNT["password"], virtual_host=ACCOUNT["vhost"])
    connection.connect()
    return connection


@pytest.fixture
def ticks(broker):
    """The queue the entries send to, empty; drain() returns what the schedulers sent:
    [(entry, slot, task id)] in arrival order (a connection each time: one test restarts
    the broker)."""
    connection = connect(broker)
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    channel.queue_purge(QUEUE)
    channel.queue_delete("celeryd.beat.state")
    connection.close()

    def drain():
        got = []
        connection = connect(broker)
        channel = connection.channel()
        while (message := channel.basic_get(QUEUE, no_ack=True)) is not None:
            headers = message.properties["application_headers"]
            got.append((headers["beat_entry"], headers["beat_slot"], headers["id"]))
        connection.close()
        return got

    return drain


def write_config(directory, broker, entries):
    directory.mkdir(parents=True, exist_ok=True)
    main = directory / "celeryd.yaml"
    main.write_text(
        f"broker:\n  host: 127.0.0.1\n  port: {broker.port}\n  vhost: {ACCOUNT['vhost']}\n"
        f"  user: {ACCOUNT['user']}\n  password: {ACCOUNT['password']}\n"
        f"beat:\n  heartbeat: {HEARTBEAT}\n  entries:\n{entries}")
    return main


TICK = f"    tick: {{task: beattest.tick, every: 1, queue: {QUEUE}}}\n"


class Fleet:
    """Schedulers started on one config, each with its own state directory."""

    def __init__(self, tmp_path, config):
        self.tmp_path, self.config, self.members = tmp_path, config, []

    def start(self, count=1):
        for _ in range(count):
            state = self.tmp_path / f"state-{len(self.members)}"
            state.mkdir()
            member = WorkerProcess(self.config, self.tmp_path, module="celeryd_pkg.beat",
                                   env={"STATE_DIRECTORY": str(state)})
            member.wait_for("READY=1", timeout=30)
            self.members.append(member)
        return self

    def statuses(self):
        """Each live member's last STATUS= text."""
        shown = {}
        for member in self.members:
            if member.proc.poll() is None:
                member.receive(0.05)
                lines = [line[7:] for data in member.messages for line in data.splitlines()
                         if line.startswith("STATUS=")]
                shown[member] = lines[-1] if lines else ""
        return shown

    def leaders(self):
        return [m for m, status in self.statuses().items() if status.startswith("Leading")]

    def wait_for_leader(self, timeout, besides=None):
        """Wait until exactly one live member other than besides leads; return it and the
        seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            leaders = [m for m in self.leaders() if m is not besides]
            if len(leaders) == 1:
                return leaders[0], time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"no single leader in {timeout}s: {self.statuses()}\n"
                             + "\n".join(m.output()[-2000:] for m in self.members))

    def close(self):
        for member in self.members:
            member.close()


@pytest.fixture
def fleet(tmp_path, broker):
    fleets = []

    def make(entries=TICK):
        fleets.append(Fleet(tmp_path, write_config(tmp_path / "etc", broker, entries)))
        return fleets[-1]

    yield make
    for each in fleets:
        each.close()


def slots_of(sent, entry="tick"):
    return sorted(slot for name, slot, _ in sent if name == entry)


def assert_once_each(sent):
    """No slot twice, and each with the id every host would give it."""
    twice = [key for key, n in Counter((name, slot) for name, slot, _ in sent).items() if n > 1]
    assert not twice, f"sent twice: {twice}"
    assert all(identity == task_id(ACCOUNT["vhost"], name, slot)
               for name, slot, identity in sent)


def missing(slots):
    """The whole-second slots between the first and the last that were not sent."""
    return sorted(set(range(int(slots[0]), int(slots[-1]) + 1)) - {int(s) for s in slots})


def test_one_of_three_leads_and_every_slot_is_sent_once(fleet, ticks):
    beats = fleet().start(3)
    leader, _ = beats.wait_for_leader(10)
    statuses = beats.statuses()
    assert sum(status.startswith("Standing by") for status in statuses.values()) == 2, statuses
    time.sleep(6)
    sent = ticks()
    assert_once_each(sent)
    slots = slots_of(sent)
    assert len(slots) >= 5 and not missing(slots), slots
    assert all(slot == int(slot) for slot in slots)  # every: 1 fires on whole seconds
    assert "leading since" in leader.output()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_lost_leader_is_replaced_within_the_bound_and_no_slot_is_sent_twice(
        fleet, ticks, how):
    beats = fleet().start(3)
    leader, _ = beats.wait_for_leader(10)
    time.sleep(3)
    leader.proc.send_signal(getattr(signal, how))
    successor, took = beats.wait_for_leader(6 * HEARTBEAT, besides=leader)
    bound = 1.5 + (3 * HEARTBEAT if how == "SIGSTOP" else 0)
    print(f"\n{how}: a standby led {took:.1f} s after the leader stopped (bound {bound} s)")
    assert took <= bound
    if how == "SIGSTOP":
        leader.proc.send_signal(signal.SIGCONT)  # it wakes with slots due: it must not send
    time.sleep(4)
    sent = ticks()
    assert_once_each(sent)
    gap = missing(slots_of(sent))
    assert len(gap) <= took + 1, (gap, took)
    if how == "SIGSTOP":
        deadline = time.monotonic() + 10
        while "lost the lead" not in leader.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "lost the lead" in leader.output(), leader.output()[-2000:]
        assert successor in beats.leaders() and leader not in beats.leaders()


def test_a_clean_stop_hands_over_without_a_missing_slot(fleet, ticks):
    beats = fleet().start(2)
    leader, _ = beats.wait_for_leader(10)
    time.sleep(3)
    assert leader.stop() == 0
    beats.wait_for_leader(5, besides=leader)
    time.sleep(3)
    sent = ticks()
    assert_once_each(sent)
    slots = slots_of(sent)
    assert not missing(slots), slots
    state_file = beats.tmp_path / f"state-{beats.members.index(leader)}" / "beat-state.json"
    state = json.loads(state_file.read_text())
    assert state["released"] is not None and state["fired"]["tick"] in slots


def test_after_a_broker_restart_one_leads_again_and_no_slot_is_sent_twice(
        fleet, ticks, broker):
    beats = fleet().start(3)
    beats.wait_for_leader(10)
    time.sleep(2)
    before = ticks()
    broker.stop()
    broker.start()
    _, took = beats.wait_for_leader(60)
    time.sleep(3)
    sent = before + ticks()
    assert_once_each(sent)
    print(f"\nbroker restart: a scheduler led again {took:.1f} s after the broker was back")
    assert all(m.proc.poll() is None for m in beats.members)


def admin(config, *args):
    """celeryd-admin with the config; status remembers nodes beside the config."""
    scratch = config.parent
    return run_module("celeryd_pkg.admin", *args, "--config", str(config), env=clean_env(
        XDG_CACHE_HOME=str(scratch / "cache"), CELERYD_ROOT=str(scratch / "root")))


def test_status_names_the_leader_and_the_next_slots_and_check_warns_without_one(
        fleet, ticks):
    beats = fleet(TICK + "    nightly: {task: beattest.report, cron: '30 3 * * *', "
                  f"queue: {QUEUE}}}\n").start(2)
    beats.wait_for_leader(10)
    time.sleep(1.5)
    shown = admin(beats.config, "status", "--json", "--timeout", "0.5")
    beat = json.loads(shown.stdout)["beat"]
    assert beat["leading"] and beat["leader"] == socket.gethostname(), shown.stdout
    assert [entry["entry"] for entry in beat["next"]] == ["tick", "nightly"]
    assert beat["next"][1]["at"].endswith("T03:30:00+00:00")
    text = admin(beats.config, "status", "--timeout", "0.5").stdout
    assert f"BEAT: celery-beat on {socket.gethostname()} leads since" in text, text
    checked = admin(beats.config, "check")
    assert f"OK   beat: celery-beat on {socket.gethostname()} leads; 2 entries" in \
        checked.stdout, checked.stdout

    for member in beats.members:
        member.stop()
    checked = admin(beats.config, "check")
    assert "WARN beat: no celery-beat leads: the 2 entries of beat.entries are not sent" in \
        checked.stdout, checked.stdout
    shown = admin(beats.config, "status", "--json", "--timeout", "0.5")
    result = json.loads(shown.stdout)
    assert not result["beat"]["leading"] and result["beat"]["released"], result["beat"]
    assert any(reason.startswith("no celery-beat leads") for reason in result["reasons"])
    assert shown.returncode == 1
