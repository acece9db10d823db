"""Reliability and security proof (issue 7) on one booted machine per suite.

    Given a booted <suite> machine with RabbitMQ and the three debs installed (postinst
          provisions the broker account and starts the worker)
    When  1,000 tasks are queued and (a) one prefork child, (b) the worker's main process is
          SIGKILLed, (c) RabbitMQ restarts, (d) `systemctl restart celery-worker` runs
    Then  every task id reaches SUCCESS, once, except where the acks_late contract allows a
          second run (counted and reported), and the queue ends empty
    And   a broker down at start or for 60 s mid-run is waited out, without a restart
    And   a task cannot write /etc or /usr, read /root or open a raw socket
    And   the broker password is in no argv, environment, journal or output, and in no file
          but the root:celery 0640 credentials file, through rotation
    And   the account is confined to its vhost; guest is not used

    | suite    |
    | trixie   |
    | bookworm |

The tasks come from an operator task module (tasks.modules in a conf.d drop-in) that appends
one line per start and per success (Celery's task_success signal) to a ledger in the worker's
StateDirectory; the ledger, not a result backend that a broker restart may drop, is what
the counts come from. The steps share the machine and run in file order. Every measured
number is printed and written to build/reliability/<suite>.json for docs/reliability.md.
"""

import collections
import json
import os
import re
import signal
import time

import pytest
import yaml

from tests.procscan import ProcScanner
from tests.system import harness
from tests.system.harness import wait_until
from tests.system.conftest import REPO, _print_on_failure
from tests.system.test_install import assert_active

CREDENTIALS = "/etc/celeryd/credentials"
CODE_DIR = "/usr/local/lib/celeryd-test"
STATE = "/var/lib/celeryd"
TASKS = 1000
SECONDS = 0.05  # per task: 1,000 of them keep two children busy for ~30 s
CONCURRENCY = 2  # the shipped default, which this machine keeps

TASK_MODULE = '''\
"""Tasks of the reliability proof: a ledger of starts and successes, and a hardening probe."""
import errno
import os
import socket
import time

from celery import shared_task
from celery.signals import task_success

STATE = "/var/lib/celeryd"


def record(ledger, kind, task_id):
    fd = os.open(os.path.join(STATE, ledger), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{kind} {task_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


@shared_task(name="reliability.work", bind=True, ignore_result=True)
def work(self, ledger, seconds):
    record(ledger, "start", self.request.id)
    time.sleep(seconds)
    return ledger


@task_success.connect
def on_success(sender=None, result=None, **kwargs):
    if sender is not None and sender.name == "reliability.work":
        record(result, "success", sender.request.id)


def attempt(action):
    try:
        value = action()
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))
    return "ok" if value is None else value


def write(path):
    with open(path, "w") as f:
        f.write("probe")


def read(path):
    with open(path) as f:
        f.read()


def raw(family, kind, proto=0):
    socket.socket(family, kind, proto).close()


@shared_task(name="reliability.probe")
def probe(tag):
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    return {
        "write /etc": attempt(lambda: write("/etc/celeryd-probe")),
        "write /etc/celeryd": attempt(lambda: write("/etc/celeryd/probe.yaml")),
        "write /usr": attempt(lambda: write("/usr/celeryd-probe")),
        "write /usr/local/lib": attempt(lambda: write("/usr/local/lib/celeryd-probe")),
        "read /root": attempt(lambda: read("/root/secret-probe")),
        "list /root": attempt(lambda: len(os.listdir("/root"))),
        "raw AF_INET icmp": attempt(lambda: raw(socket.AF_INET, socket.SOCK_RAW,
                                                socket.IPPROTO_ICMP)),
        "raw AF_PACKET": attempt(lambda: raw(socket.AF_PACKET, socket.SOCK_RAW)),
        "raw AF_NETLINK": attempt(lambda: raw(socket.AF_NETLINK, socket.SOCK_RAW)),
        "write state dir": attempt(lambda: write(os.path.join(STATE, "probe-" + tag))),
        "write /tmp": attempt(lambda: write("/tmp/celeryd-probe-" + tag)),
        "CapEff": status["CapEff"], "CapPrm": status["CapPrm"], "CapBnd": status["CapBnd"],
        "CapAmb": status["CapAmb"], "NoNewPrivs": status["NoNewPrivs"],
        "Seccomp": status["Seccomp"],
    }
'''

PUBLISH = '''\
"""Publish N reliability.work tasks with the installed config; print their ids as JSON."""
import json
import sys
import uuid

from celeryd_pkg.app import app

count, seconds, ledger = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ids = [str(uuid.uuid4()) for _ in range(count)]
with app.producer_or_acquire() as producer:
    for task_id in ids:
        app.send_task("reliability.work", args=[ledger, seconds], task_id=task_id,
                      producer=producer)
print(json.dumps(ids))
'''

DROP_IN = f"""\
# The reliability proof's task module (tests/system/test_reliability.py).
tasks:
  modules: [reliability_tasks]
  pythonpath: [{CODE_DIR}]
"""

RESULTS = collections.defaultdict(dict)


@pytest.fixture(scope="module", params=harness.SUITES, ids=harness.SUITES)
def machine(request, prerequisites, debs):
    """A booted machine of the suite with the debs, an offline rabbitmq-server, the task
    module and its conf.d drop-in (in place before the package starts the worker)."""
    with harness.Container(request.param) as container:
        container.prepare(debs, ["rabbitmq-server"])
        os.makedirs(container.root + CODE_DIR, mode=0o755)
        for name, text in (("reliability_tasks.py", TASK_MODULE), ("publish.py", PUBLISH)):
            with open(f"{container.root}{CODE_DIR}/{name}", "w") as f:
                f.write(text)
        os.makedirs(container.root + "/etc/celeryd/conf.d", mode=0o755)
        with open(container.root + "/etc/celeryd/conf.d/50-reliability.yaml", "w") as f:
            f.write(DROP_IN)
        started = time.monotonic()
        container.boot()
        yield container
        RESULTS[request.param]["machine seconds"] = round(time.monotonic() - started, 1)
        write_results(request, request.param)


@pytest.fixture(autouse=True)
def journal_on_failure(request, machine):
    yield
    _print_on_failure(request, machine)


def write_results(request, suite):
    """Write the suite's numbers to build/reliability/<suite>.json and show them."""
    directory = os.path.join(REPO, "build", "reliability")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{suite}.json"), "w") as f:
        json.dump(RESULTS[suite], f, indent=2, sort_keys=True)
    show(request, f"{suite}: reliability numbers: {json.dumps(RESULTS[suite], sort_keys=True)}")


def show(request, text):
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{text}")


def prop(machine, name, unit="celery-worker"):
    return machine.run(["systemctl", "show", "-p", name, "--value", unit]).stdout.strip()


def rabbitmqctl(machine, *args):
    out = machine.run(["rabbitmqctl", "-q", *args, "--no-table-headers"], timeout=120).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def queued(machine):
    """Messages in queue celery, ready plus unacknowledged."""
    rows = rabbitmqctl(machine, "list_queues", "-p", "celery", "name", "messages")
    return sum(int(row[1]) for row in rows if row[0] == "celery")


def ledger(machine, name):
    """Return (starts, successes): Counters of task id, and the (kind, id, pid) lines."""
    path = f"{machine.root}{STATE}/{name}"
    try:
        with open(path) as f:
            lines = [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        lines = []
    starts = collections.Counter(i for kind, i, _ in lines if kind == "start")
    successes = collections.Counter(i for kind, i, _ in lines if kind == "success")
    return starts, successes, lines


def publish(machine, count, name):
    out = machine.run(["python3", f"{CODE_DIR}/publish.py", str(count), str(SECONDS), name],
                      timeout=300).stdout
    ids = json.loads(out)
    assert len(set(ids)) == count
    return ids


def submit(machine, *args, check=True):
    result = machine.run(["celery-submit", *args], check=False, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def host_pid(machine, pid):
    """The host's pid of the container's process pid (same pid namespace as its init)."""
    namespace = os.readlink(f"/proc/{machine.pid}/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
            if nspid[-1] == pid and os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                return int(entry)
        except (OSError, StopIteration):
            continue
    raise AssertionError(f"no host pid for {pid} in {machine.name}")


def kill_a_child_mid_task(machine, name, attempts=5):
    """SIGKILL a prefork child while its ledger says it runs a task (from the host, so the
    signal lands within milliseconds of the look); try again if it had just finished.
    Return what was killed and the task that was in flight."""
    for attempt in range(1, attempts + 1):
        main = prop(machine, "MainPID")
        children = wait_until(
            lambda: (lambda pids: pids if len(pids) == CONCURRENCY else None)(
                machine.run(["pgrep", "-P", main], check=False).stdout.split()),
            30, f"{CONCURRENCY} prefork children")
        hosts = {child: host_pid(machine, child) for child in children}
        for _ in range(1000):
            latest = {pid: kind for kind, _, pid in ledger(machine, name)[2]}
            busy = [child for child in children if latest.get(child) == "start"]
            if busy:
                child = busy[0]
                os.kill(hosts[child], signal.SIGKILL)
                break
            time.sleep(0.005)
        else:
            raise AssertionError("no prefork child was busy")
        time.sleep(1)
        kind, task_id, _ = [line for line in ledger(machine, name)[2] if line[2] == child][-1]
        if kind == "start":  # it never got to success: killed mid-task
            return {"killed child": child, "task in flight": task_id, "kills": attempt}
    raise AssertionError(f"{attempts} kills, none landed mid-task")


# --- the steps ------------------------------------------------------------------------------

def test_install_provisions_a_least_privilege_account_and_guest_is_not_used(machine):
    started = time.monotonic()
    machine.run(["apt-get", "install", "--no-download", "-y", "rabbitmq-server"], timeout=600)
    assert_active(machine, "rabbitmq-server")
    machine.run(f"cd {machine.deb_dir} && apt-get install -y ./*.deb", timeout=600)
    assert_active(machine, "celery-worker")
    RESULTS[machine.suite]["install seconds"] = round(time.monotonic() - started, 1)
    assert machine.run(["stat", "-c", "%U:%G %a", CREDENTIALS]).stdout.strip() == \
        "root:celery 640"
    assert submit(machine, "add", "4", "4").stdout == "8\n"
    # Permissions: the account on its vhost only, nobody else on that vhost, no tags.
    assert rabbitmqctl(machine, "list_user_permissions", "celery") == [
        ["celery", ".*", ".*", ".*"]]
    assert [row[0] for row in rabbitmqctl(machine, "list_permissions", "-p", "celery")] == [
        "celery"]
    users = {row[0]: row[1] for row in rabbitmqctl(machine, "list_users")}
    assert users["celery"] in ("[]", "")
    connections = rabbitmqctl(machine, "list_connections", "user", "vhost")
    assert connections and all(row == ["celery", "celery"] for row in connections), connections
    # The account cannot open another vhost, not even the default one guest lives on.
    machine.run(["rabbitmqctl", "-q", "add_vhost", "other"])
    probe = machine.run(["python3", "-c", (
        "from celeryd_pkg import broker, config\n"
        "from celeryd_pkg.errors import VhostRefused\n"
        "c = config.load()\n"
        "broker.connect(c).close()\n"
        "for vhost in ('other', '/'):\n"
        "    try:\n"
        "        broker.connect(c, vhost=vhost)\n"
        "    except VhostRefused as e:\n"
        "        print('REFUSED', vhost, e.message)\n")]).stdout
    assert probe.count("REFUSED ") == 2, probe
    assert "amqp://celery:***@localhost:5672/" in probe
    result = machine.run("CELERYD_BROKER_VHOST=other celery-submit add 1 1", check=False)
    assert result.returncode == 5 and "access to vhost 'other'" in result.stderr, result.stderr
    RESULTS[machine.suite]["least privilege"] = {
        "permissions": "celery on vhost celery only", "other vhosts": "refused (other, /)",
        "connections": sorted({"/".join(row) for row in connections})}


FAULTS = ["child-sigkill", "main-sigkill", "broker-restart", "systemctl-restart"]


@pytest.mark.parametrize("fault", FAULTS)
def test_1000_queued_tasks_each_succeed_once_through_a_fault(machine, fault):
    name = f"ledger-{fault}"
    restarts, pid = int(prop(machine, "NRestarts")), prop(machine, "MainPID")
    started = time.monotonic()
    ids = publish(machine, TASKS, name)
    published = time.monotonic() - started
    wait_until(lambda: sum(ledger(machine, name)[1].values()) >= TASKS * 0.3, 180,
               "30% of the tasks to succeed")
    done_at_fault = len(ledger(machine, name)[1])
    detail = {}
    since = machine.run(["date", "+%s"]).stdout.strip()
    fault_started = time.monotonic()
    if fault == "child-sigkill":
        detail = kill_a_child_mid_task(machine, name)
    elif fault == "main-sigkill":
        machine.run(["kill", "-KILL", pid])
        wait_until(lambda: prop(machine, "MainPID") not in ("0", pid), 60, "a new main PID")
    elif fault == "broker-restart":
        machine.run(["systemctl", "restart", "rabbitmq-server"], timeout=300)
    else:
        machine.run(["systemctl", "restart", "celery-worker"], timeout=300)
    detail["fault seconds"] = round(time.monotonic() - fault_started, 1)
    wait_until(lambda: set(ledger(machine, name)[1]) >= set(ids), 300,
               "every task to succeed")
    wait_until(lambda: queued(machine) == 0, 120, "queue celery to be empty")
    time.sleep(2)  # a late second run, if any, lands in the ledger now
    starts, successes, _ = ledger(machine, name)
    elapsed = time.monotonic() - started
    duplicates = {i: n for i, n in successes.items() if n > 1}
    rerun = {i: n for i, n in starts.items() if n > 1}
    RESULTS[machine.suite][fault] = {
        "tasks": TASKS, "success ids": len(set(successes) & set(ids)),
        "unknown ids": len(set(successes) - set(ids)), "duplicates": sum(duplicates.values())
        - len(duplicates), "re-run (started twice)": len(rerun),
        "done at fault": done_at_fault, "publish seconds": round(published, 1),
        "seconds": round(elapsed, 1), "NRestarts": int(prop(machine, "NRestarts")),
        **detail}
    print(fault, RESULTS[machine.suite][fault])
    print("\n".join(timeline(machine, since)))
    # Nothing lost, nothing invented.
    assert set(successes) == set(ids)
    assert sum(starts.values()) >= TASKS
    # Twice only where acks_late allows it: a task that finished while its ack could not
    # reach the broker (at most the tasks in flight); a warm restart finishes and acks them.
    allowed = 0 if fault == "systemctl-restart" else CONCURRENCY
    assert RESULTS[machine.suite][fault]["duplicates"] <= allowed, duplicates
    if fault == "child-sigkill":
        # The kill landed mid-task: that task was started again elsewhere, and succeeded.
        assert starts[detail["task in flight"]] >= 2
        # The worker names the task whose child died and counts it (poison messages).
        assert (f"[{detail['task in flight']}] lost its worker process (Worker exited "
                f"prematurely: signal 9 (SIGKILL)") in machine.journal(unit="celery-worker")
    # systemd restarted the worker only after the SIGKILL of its main process (a manual
    # restart resets the counter).
    expected = {"main-sigkill": restarts + 1, "systemctl-restart": 0}.get(fault, restarts)
    assert int(prop(machine, "NRestarts")) == expected
    assert_active(machine, "celery-worker")


def timeline(machine, since):
    """The worker unit's lifecycle lines in the journal since the epoch second since."""
    log = machine.run(["journalctl", "-u", "celery-worker", "--since", f"@{since}", "-o",
                       "short-precise", "--no-pager"], timeout=120).stdout
    marks = ("systemd[1]", "Warm shutdown", "exited with", "lost its worker process",
             "Connected to", "ready.", "Cannot connect", "consumer:")
    return [line for line in log.splitlines() if any(mark in line for mark in marks)][:40]


def sample(machine, seconds, interval=1.0):
    """Sample the worker unit's state for seconds; return the list of samples."""
    samples, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append({key: prop(machine, key) for key in
                        ("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText",
                         "Result")})
        time.sleep(interval)
    return samples


def test_a_broker_down_for_60_s_mid_run_is_waited_out_without_a_restart(machine):
    name, count = "ledger-broker-outage", 400
    pid, restarts = prop(machine, "MainPID"), prop(machine, "NRestarts")
    ids = publish(machine, count, name)
    wait_until(lambda: sum(ledger(machine, name)[1].values()) >= count * 0.25, 120,
               "a quarter of the tasks to succeed")
    machine.run(["systemctl", "stop", "rabbitmq-server"], timeout=300)
    down = time.monotonic()
    samples = sample(machine, 60)
    outage = time.monotonic() - down
    done_during_outage = len(ledger(machine, name)[1])
    machine.run(["systemctl", "start", "rabbitmq-server"], timeout=300)
    back = time.monotonic()
    wait_until(lambda: prop(machine, "StatusText").startswith("Consuming"), 120,
               "the worker to consume again")
    reconnect = time.monotonic() - back
    wait_until(lambda: set(ledger(machine, name)[1]) >= set(ids), 300, "every task")
    wait_until(lambda: queued(machine) == 0, 120, "queue celery to be empty")
    time.sleep(2)
    starts, successes, _ = ledger(machine, name)
    duplicates = sum(successes.values()) - len(successes)
    statuses = sorted({s["StatusText"].split(";")[0] for s in samples})
    RESULTS[machine.suite]["broker down 60 s mid-run"] = {
        "tasks": count, "success ids": len(set(successes) & set(ids)),
        "duplicates": duplicates, "outage seconds": round(outage, 1),
        "reconnected seconds after broker start": round(reconnect, 1),
        "states": sorted({s["ActiveState"] for s in samples}),
        "restarts": int(prop(machine, "NRestarts")) - int(restarts), "status": statuses}
    assert set(successes) == set(ids)
    assert duplicates <= CONCURRENCY
    assert {s["ActiveState"] for s in samples} == {"active"}
    assert {s["MainPID"] for s in samples} == {pid} == {prop(machine, "MainPID")}
    assert {s["NRestarts"] for s in samples} == {restarts} == {prop(machine, "NRestarts")}
    assert any(s["StatusText"].startswith(
        "Broker connection lost; reconnecting to amqp://celery:***@localhost:5672/celery")
        for s in samples), statuses
    assert done_during_outage < count  # the outage really interrupted the run


def test_a_broker_down_at_start_is_waited_for_then_the_worker_starts_by_itself(machine):
    machine.run(["systemctl", "stop", "celery-worker"], timeout=300)
    machine.run(["systemctl", "stop", "rabbitmq-server"], timeout=300)
    machine.run(["systemctl", "start", "--no-block", "celery-worker"])
    restarts = prop(machine, "NRestarts")
    wait_until(lambda: prop(machine, "StatusText").startswith("Waiting"), 60,
               "the worker to say it waits")
    samples = sample(machine, 30)
    machine.run(["systemctl", "start", "rabbitmq-server"], timeout=300)
    back = time.monotonic()
    wait_until(lambda: prop(machine, "ActiveState") == "active", 120,
               "the worker to become active by itself")
    ready = time.monotonic() - back
    RESULTS[machine.suite]["broker down at start"] = {
        "down seconds sampled": 30, "states": sorted({s["ActiveState"] for s in samples}),
        "main pids": len({s["MainPID"] for s in samples}),
        "restarts": int(prop(machine, "NRestarts")) - int(restarts),
        "ready seconds after broker start": round(ready, 1),
        "TimeoutStartSec": prop(machine, "TimeoutStartUSec"),
        "status": sorted({s["StatusText"] for s in samples})}
    assert {s["ActiveState"] for s in samples} == {"activating"}
    assert len({s["MainPID"] for s in samples}) == 1  # one process waiting, no crash loop
    assert {s["NRestarts"] for s in samples} == {restarts} == {prop(machine, "NRestarts")}
    assert "start-limit-hit" not in {s["Result"] for s in samples}
    assert {s["StatusText"] for s in samples} == {
        "Waiting for broker amqp://celery:***@localhost:5672/celery"}
    assert submit(machine, "add", "4", "4").stdout == "8\n"


def test_a_task_cannot_write_etc_or_usr_read_root_or_open_a_raw_socket(machine):
    machine.run("umask 077 && echo root-only > /root/secret-probe")
    tag = os.urandom(4).hex()
    outcome = json.loads(submit(machine, "reliability.probe", json.dumps(tag), "--json").stdout)
    assert outcome["state"] == "SUCCESS", outcome
    seen = outcome["result"]
    out = machine.run(["systemd-analyze", "security", "--no-pager", "celery-worker.service"],
                      check=False).stdout
    exposure = float(re.search(r"Overall exposure level for celery-worker.service: ([0-9.]+)",
                               out).group(1))
    RESULTS[machine.suite]["hardening"] = dict(seen, exposure=exposure)
    for path in ("/etc", "/etc/celeryd", "/usr", "/usr/local/lib"):
        assert seen[f"write {path}"] == "EROFS", seen
    assert seen["read /root"] in ("EACCES", "ENOENT"), seen
    assert seen["list /root"] in ("EACCES", 0), seen
    for family in ("AF_INET icmp", "AF_PACKET", "AF_NETLINK"):
        assert seen[f"raw {family}"] in ("EPERM", "EACCES", "EAFNOSUPPORT"), seen
    # What a task may write: its state directory and a /tmp of its own.
    assert seen["write state dir"] == "ok" and seen["write /tmp"] == "ok", seen
    assert machine.run(["test", "-e", f"/tmp/celeryd-probe-{tag}"], check=False).returncode == 1
    assert machine.run(["test", "-e", f"{STATE}/probe-{tag}"], check=False).returncode == 0
    # No capabilities at all, no new privileges, a seccomp filter.
    for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(seen[key], 16) == 0, seen
    assert seen["NoNewPrivs"] == "1" and seen["Seccomp"] == "2", seen
    settings = {key: prop(machine, key) for key in (
        "ProtectSystem", "PrivateTmp", "NoNewPrivileges", "CapabilityBoundingSet",
        "AmbientCapabilities", "ProtectHome", "User")}
    assert settings == {"ProtectSystem": "strict", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                        "CapabilityBoundingSet": "", "AmbientCapabilities": "",
                        "ProtectHome": "yes", "User": "celery"}, settings
    assert exposure <= 2.0


def password(machine):
    with open(machine.root + CREDENTIALS) as f:
        return yaml.safe_load(f)["broker"]["password"]  # JSON as celeryd writes it, or YAML


def test_the_password_is_nowhere_but_the_credentials_file_through_rotation(machine):
    old = password(machine)
    scanner = ProcScanner()
    scanner.start()
    try:
        rotate = machine.run(["celeryd-admin", "rotate-password"], timeout=300)
        machine.run(["systemctl", "restart", "celery-worker"], timeout=300)
        outputs = [rotate,
                   submit(machine, "add", "20", "22", "--json"),
                   machine.run(["celeryd-admin", "check"], check=False, timeout=120),
                   machine.run("CELERYD_BROKER_VHOST=nope celery-submit add 1 1", check=False),
                   machine.run("CELERYD_BROKER_VHOST=nope celeryd-admin check", check=False,
                               timeout=120)]
    finally:
        scanner.stop()
    new = password(machine)
    assert new != old and len(new) >= 32
    assert machine.run(["stat", "-c", "%U:%G %a", CREDENTIALS]).stdout.strip() == \
        "root:celery 640"
    assert json.loads(outputs[1].stdout)["result"] == 42
    assert outputs[2].returncode == 0, outputs[2].stdout
    assert "amqp://celery:***@localhost:5672/celery" in outputs[2].stdout
    assert outputs[3].returncode == 5
    assert "amqp://celery:***@localhost:5672/nope" in outputs[3].stderr
    assert outputs[4].returncode == 5
    # The worker: main process and pool children, argv and environment.
    main = prop(machine, "MainPID")
    pids = [main, *machine.run(["pgrep", "-P", main]).stdout.split()]
    assert len(pids) == 1 + CONCURRENCY
    proc = machine.run(f"for p in {' '.join(pids)}; do cat /proc/$p/environ /proc/$p/cmdline; "
                       f"echo; done").stdout
    assert "celeryd_pkg.worker" in proc
    journal = machine.run(["journalctl", "-b", "--no-pager", "-o", "cat"], timeout=120).stdout
    # The journal does name the broker, masked: Celery's "Connected to amqp://celery:**@...".
    assert re.search(r"amqp://celery:\*\*\*?@", journal)
    # Every file that holds a password: only the credentials file, and never world-readable.
    holders = machine.run(
        "grep -rlF --devices=skip -f /dev/stdin / --exclude-dir=proc --exclude-dir=sys "
        "--exclude-dir=dev; true", input=f"{old}\n{new}\n", timeout=300).stdout.split()
    modes = {path: machine.run(["stat", "-c", "%U:%G %a", path]).stdout.strip()
             for path in holders}
    RESULTS[machine.suite]["secrets"] = {
        "argv samples": len(scanner.seen), "scan rounds": scanner.rounds,
        "files holding the password": modes, "journal lines": journal.count("\n")}
    assert scanner.rounds > 50
    assert any(b"celeryd-admin\0rotate-password" in line for line in scanner.seen)
    for secret in (old, new):
        assert not [line for line in scanner.seen if secret.encode() in line]
        assert secret not in proc
        assert secret not in journal
        for output in outputs:
            assert secret not in output.stdout + output.stderr
    assert modes == {CREDENTIALS: "root:celery 640"}
