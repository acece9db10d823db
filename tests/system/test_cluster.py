"""No single broker: three RabbitMQ nodes in one cluster, formed and failed over by celeryd.

    Given six booted Debian 13 machines on a private bridge (rmq-a, rmq-b, rmq-c, worker-a,
          worker-b, client), RabbitMQ on the first three
    When  rmq-a runs tls-setup for every broker name and `provision --for-host NAME --role
          broker` for rmq-b and rmq-c, which run `celeryd-admin join -` with it
    Then  the three form one cluster, `celeryd-admin check` shows its members, and the
          workers' queue is a quorum queue replicated on all three
    And   1,000 queued tasks all succeed, duplicates within the late-ack bound, though the
          node the workers use is stopped and, once it is back, the next one is killed hard;
          no worker unit restarts, celery-submit keeps answering, a countdown task sent
          before the faults runs after them
    And   a node cut off from the other two confirms no publish

Debian 13 only: Celery 5.2 (Debian 12) cannot consume quorum queues, and refuses a cluster
with exit 3 (tests/integration/test_failover.py). The steps share the six machines and run
in file order, as README.md's "No single broker" section, whose commands they are.
"""

import collections
import concurrent.futures
import json
import re
import time

import pytest

from tests.system import harness
from tests.system.conftest import _print_on_failure

SUBNET = "10.231.8"
HOSTS = {"rmq-a": 1, "rmq-b": 2, "rmq-c": 3, "worker-a": 4, "worker-b": 5, "client": 6}
BROKERS = ("rmq-a", "rmq-b", "rmq-c")
WORKERS = ("worker-a", "worker-b")
NODES = ",".join(BROKERS)
PACKAGES = {  # what each host installs from /root/debs (plus the archive's dependencies)
    "broker": ["python3-celeryd-pkg", "rabbitmq-server", "openssl"],
    "worker": ["python3-celeryd-pkg", "celeryd"],
    "client": ["python3-celeryd-pkg", "celery-submit"],
}
TASKS, TASK_SECONDS = 1000, 0.08
# Late acks: a fault may run again what each worker held, at most concurrency (2) running and
# prefetch (1 per child) reserved, per worker and per fault.
DUPLICATE_BOUND = 2 * len(WORKERS) * (2 + 2)
joined = {}  # join strings, from rmq-a to the others
measured = {}  # the fault table, printed at the end


def ip(name):
    return f"{SUBNET}.{HOSTS[name]}"


def role(name):
    return "broker" if name in BROKERS else "worker" if name in WORKERS else "client"


@pytest.fixture(scope="module")
def hosts(prerequisites, debs):
    """The six booted machines on a bridge of their own, each knowing the others by name."""
    names = "".join(f"{ip(name)}\t{name}\n" for name in HOSTS)
    with harness.Bridge(subnet=SUBNET) as bridge:
        machines = {}
        try:
            for name, number in HOSTS.items():
                machine = harness.Container("trixie", network_bridge=bridge.name,
                                            address=bridge.address(number))
                machines[name] = machine
                machine.prepare(debs, ["rabbitmq-server", "openssl"])
                # RabbitMQ's node is rabbit@HOSTNAME: each name must resolve everywhere.
                with open(f"{machine.root}/etc/hostname", "w") as f:
                    f.write(f"{name}\n")
                with open(f"{machine.root}/etc/hosts", "a") as f:
                    f.write(names)
            for machine in machines.values():
                machine.boot()
            yield machines
        finally:
            for machine in machines.values():
                machine.stop()


@pytest.fixture(autouse=True)
def journal_on_failure(request, hosts):
    yield
    for machine in hosts.values():
        _print_on_failure(request, machine)


def install(machine, name):
    local = {"python3-celeryd-pkg", "celeryd", "celery-submit"}
    packages = [f"./{p}_*.deb" if p in local else p for p in PACKAGES[role(name)]]
    machine.run(f"cd {machine.deb_dir} && apt-get install -y -q --no-install-recommends "
                f"{' '.join(packages)}", timeout=900)


def admin(machine, *args, input=None):
    result = machine.run(["celeryd-admin", *args], check=False, timeout=300, input=input)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def cluster_status(machine):
    out = machine.run(["rabbitmqctl", "-q", "cluster_status", "--formatter", "json"],
                      check=False, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def successes(machine):
    """[(unix time, task id)] of every task the worker logged as succeeded, in order."""
    out = machine.run(["journalctl", "-b", "-u", "celery-worker", "-o", "short-unix",
                       "--no-pager"], timeout=60).stdout
    return [(float(stamp), task_id) for stamp, task_id in
            re.findall(r"^(\d+\.\d+) .*Task celeryd\.\w+\[([0-9a-f-]+)\] succeeded", out, re.M)]


def consumer_nodes(hosts, asked):
    """The broker nodes whose channels consume the task queue (the workers' connections: a
    worker also holds connections to other nodes, for native delayed delivery), as broker
    asked sees them. RabbitMQ names a channel's node in its pid: <rabbit@rmq-a.N.N.N>."""
    out = hosts[asked].run(["rabbitmqctl", "-q", "list_consumers", "-p", "celery",
                            "queue_name", "channel_pid", "--formatter", "json"],
                           timeout=60).stdout
    return {re.search(r"rabbit@([\w-]+)\.", row["channel_pid"]).group(1)
            for row in json.loads(out) if row["queue_name"] == "celery"}


def test_rmq_a_issues_join_strings_and_rmq_b_and_c_join_its_cluster(hosts):
    with concurrent.futures.ThreadPoolExecutor(len(HOSTS)) as pool:
        list(pool.map(lambda name: install(hosts[name], name), HOSTS))
    first = hosts["rmq-a"]
    # One certificate names every broker: a client verifies whichever node it reaches.
    admin(first, "tls-setup", *[f"--name={name}" for name in BROKERS])
    for name in ("rmq-b", "rmq-c"):
        issued = admin(first, "provision", "--for-host", name, "--role", "broker",
                       "--broker-host", NODES)
        assert issued.stderr == "" and "&cluster=" in issued.stdout
        joined[name] = issued.stdout
    for name in ("rmq-b", "rmq-c"):
        machine = hosts[name]
        result = admin(machine, "join", "-", input=joined[name])
        assert result.stderr == ""
        assert "rabbitmq-server here is a node of rabbit@rmq-a's cluster" in result.stdout
        cookie = machine.run(["stat", "-c", "%U:%G %a", "/var/lib/rabbitmq/.erlang.cookie"])
        assert cookie.stdout == "rabbitmq:rabbitmq 400\n"
        secret = machine.run(["cat", "/var/lib/rabbitmq/.erlang.cookie"]).stdout.strip()
        assert secret and secret not in machine.journal()  # never logged
    status = cluster_status(first)
    assert sorted(status["running_nodes"]) == [f"rabbit@{name}" for name in BROKERS], status
    # No worker yet (check fails at its last step), but the members are all there.
    check = hosts["rmq-c"].run(["celeryd-admin", "check"], check=False, timeout=120)
    assert "OK   cluster: 3 of 3 nodes running: rabbit@rmq-a, rabbit@rmq-b, rabbit@rmq-c" \
        in check.stdout, check.stdout + check.stderr
    again = admin(hosts["rmq-b"], "join", "-", input=joined["rmq-b"])  # idempotent
    assert again.stderr == ""


@pytest.mark.parametrize("name", WORKERS + ("client",))
def test_workers_and_client_join_with_every_node(hosts, name):
    machine = hosts[name]
    issued = admin(hosts["rmq-a"], "provision", "--for-host", name, "--role",
                   "client" if name == "client" else "worker")
    assert issued.stdout.startswith(f"amqps://{role(name)}-{name}:")
    assert "@rmq-a:5671,rmq-b:5671,rmq-c:5671/celery?ca=" in issued.stdout
    admin(machine, "join", "-", input=issued.stdout)
    if name == "client":
        return
    allowed = machine.run(["systemctl", "show", "-p", "IPAddressAllow", "--value",
                           "celery-worker"]).stdout
    assert all(ip(broker) in allowed for broker in BROKERS), allowed
    machine.run(["systemctl", "start", "celery-worker"], timeout=180)
    status = machine.run(["systemctl", "show", "-p", "StatusText", "--value",
                          "celery-worker"]).stdout
    assert status.startswith(f"Consuming from celery on amqps://worker-{name}:***@rmq-a:5671,"
                             f"rmq-b:5671,rmq-c:5671/celery"), status


def test_the_task_queue_is_a_quorum_queue_on_all_three_and_check_is_ok(hosts):
    queues = hosts["rmq-a"].run(["rabbitmqctl", "-q", "list_queues", "-p", "celery", "name",
                                 "type", "members", "--formatter", "json"]).stdout
    celery = {q["name"]: q for q in json.loads(queues)}["celery"]
    assert celery["type"] == "quorum" and sorted(celery["members"]) == [
        f"rabbit@{name}" for name in BROKERS], celery
    check = admin(hosts["client"], "check")
    assert "OK   cluster: 3 of 3 nodes answer" in check.stdout, check.stdout
    assert "OK   workers: 2 consuming queue 'celery'" in check.stdout, check.stdout
    assert "WARN" not in check.stdout and "FAIL" not in check.stdout, check.stdout
    add = hosts["client"].run(["celery-submit", "add", "4", "4"], timeout=120)
    assert (add.stdout, add.stderr) == ("8\n", "")


def _wait_for_progress(workers, count, timeout, what):
    return harness.wait_until(
        lambda: sum(len(successes(machine)) for machine in workers) >= count or None,
        timeout, what)


def _resumed_after(workers, moment):
    """Seconds from moment to the first task that succeeded on any worker more than 0.5 s
    after it (a task in flight at the fault takes TASK_SECONDS and may end after it)."""
    after = [stamp for machine in workers for stamp, _ in successes(machine)
             if stamp > moment + 0.5]
    return min(after) - moment if after else None


def test_1000_tasks_succeed_though_one_node_stops_and_another_is_killed(hosts):
    client, rmq = hosts["client"], {name: hosts[name] for name in BROKERS}
    workers = [hosts[name] for name in WORKERS]
    pids = {name: hosts[name].run(["systemctl", "show", "-p", "MainPID", "--value",
                                   "celery-worker"]).stdout for name in WORKERS}
    before = sum(len(successes(machine)) for machine in workers)
    client.run(f"for i in $(seq {TASKS}); do echo '[\"sleep\", [{TASK_SECONDS}]]'; done "
               f">/root/batch.jsonl")
    sent = client.run(["celery-submit", "--batch", "/root/batch.jsonl", "--no-wait"],
                      timeout=300)
    ids = set(sent.stdout.split())  # --no-wait: one id per line
    assert len(ids) == TASKS
    delayed = client.run(["celery-submit", "add", "2", "3", "--countdown", "20",
                          "--no-wait"]).stdout.strip()
    # celery-submit, every 0.3 s through both faults: each answer or failure is counted.
    client.run(["systemd-run", "--unit=probe", "--", "sh", "-c",
                "while [ ! -e /root/probe.stop ]; do celery-submit add 1 1 --timeout 30 "
                ">/dev/null 2>>/root/probe.err; echo $? >>/root/probe.rc; sleep 0.3; done"])

    for fault, action in (("stop", ["systemctl", "stop", "rabbitmq-server"]),
                          ("kill", ["systemctl", "kill", "-s", "KILL", "rabbitmq-server"])):
        _wait_for_progress(workers, before + TASKS * (1 if fault == "stop" else 2) // 4, 120,
                           f"tasks running before the {fault}")
        used = consumer_nodes(hosts, "rmq-c")
        assert len(used) == 1, f"the workers consume through {used}"
        (victim,) = used
        moment = time.time()
        rmq[victim].run(action, timeout=120)
        done_at = sum(len(successes(machine)) for machine in workers)
        _wait_for_progress(workers, done_at + 20, 120, f"tasks running after the {fault}")
        resumed = _resumed_after(workers, moment)
        moved = consumer_nodes(hosts, next(n for n in BROKERS if n != victim))
        measured[fault] = (victim, resumed, sorted(moved))
        assert victim not in moved or fault == "kill", moved
        if fault == "stop":
            rmq[victim].run(["systemctl", "start", "rabbitmq-server"], timeout=300)
            harness.wait_until(lambda: len(cluster_status(rmq[victim]).get(
                "running_nodes", [])) == 3 or None, 120, f"{victim} back in the cluster")

    harness.wait_until(lambda: ids <= {i for m in workers for _, i in successes(m)} or None,
                       600, "every task succeeded")
    harness.wait_until(lambda: delayed in {i for m in workers for _, i in successes(m)} or None,
                       120, "the countdown task succeeded")
    client.run(["touch", "/root/probe.stop"])
    harness.wait_until(lambda: client.run(["systemctl", "is-active", "probe"],
                                          check=False).stdout.strip() != "active" or None, 60,
                       "the probe loop's end")
    codes = collections.Counter(client.run(["cat", "/root/probe.rc"]).stdout.split())
    errors = client.run(["cat", "/root/probe.err"], check=False).stdout
    runs = collections.Counter(i for m in workers for _, i in successes(m) if i in ids)
    duplicates = sum(runs.values()) - TASKS
    restarts = {name: hosts[name].run(["systemctl", "show", "-p", "NRestarts", "--value",
                                       "celery-worker"]).stdout.strip() for name in WORKERS}
    memory = {name: int(machine.run("cat /proc/[0-9]*/status 2>/dev/null | awk '/^VmRSS:/ "
                                    "{s += $2} END {print s}'").stdout) // 1024
              for name, machine in hosts.items()}
    print(f"\ncluster fault table (trixie, {TASKS} tasks of {TASK_SECONDS}s, 2 workers x 2):")
    for fault, (victim, resumed, moved) in measured.items():
        print(f"  {fault:4} {victim}: resumed after {resumed:.1f}s on {', '.join(moved)}")
    print(f"  tasks succeeded {len(runs)}/{TASKS}, duplicates {duplicates} (bound "
          f"{DUPLICATE_BOUND}); celery-submit probes {sum(codes.values())}, failed "
          f"{sum(n for code, n in codes.items() if code != '0')} {dict(codes)}; "
          f"worker restarts {restarts}")
    print(f"  RAM (sum of RSS, MiB): {memory}, total {sum(memory.values())}")
    if errors:
        print(f"  celery-submit errors:\n{errors}")
    assert set(runs) == ids and 0 <= duplicates <= DUPLICATE_BOUND, duplicates
    assert restarts == {name: "0" for name in WORKERS}
    assert {name: hosts[name].run(["systemctl", "show", "-p", "MainPID", "--value",
                                   "celery-worker"]).stdout for name in WORKERS} == pids
    assert codes.get("0", 0) >= 10 and set(codes) == {"0"}, (codes, errors)


def _isolate(hosts, name, others, off=True):
    """Drop every packet between host name and the others (blackhole routes both ways),
    while it stays reachable from the rest: a partition, not a power-off."""
    verb = "add" if off else "del"
    for other in others:
        for here, there in ((name, other), (other, name)):
            harness._sh(["nsenter", "-t", str(hosts[here].pid), "-n", "ip", "route", verb,
                         "blackhole", f"{ip(there)}/32"])


def test_a_node_cut_off_from_the_others_confirms_no_publish(hosts):
    client = hosts["client"]
    _isolate(hosts, "rmq-c", ["rmq-a", "rmq-b"])
    try:
        time.sleep(2)
        alone = client.run("CELERYD_BROKER_HOSTS=rmq-c celery-submit add 1 2 --timeout 20",
                           check=False, timeout=120)
        many = client.run("CELERYD_BROKER_HOSTS=rmq-a celery-submit add 2 2 --timeout 20",
                          check=False, timeout=120)
    finally:
        _isolate(hosts, "rmq-c", ["rmq-a", "rmq-b"], off=False)
    print(f"\nminority node rmq-c: celery-submit exit {alone.returncode}: "
          f"{alone.stderr.strip()}; majority rmq-a: {many.stdout.strip()}")
    assert alone.returncode == 4 and alone.stdout == "", alone.stdout + alone.stderr
    assert (many.returncode, many.stdout) == (0, "4\n"), many.stdout + many.stderr
