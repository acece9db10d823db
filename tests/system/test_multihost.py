"""Several machines: one broker host, two worker hosts and a client host, over TLS.

    Given four booted Debian machines (13, and again 12) on a private bridge this test creates
          (broker 10.231.7.1, worker-a .2, worker-b .3, client .4)
    When  the broker host runs `celeryd-admin tls-setup` and `provision --for-host` for each,
          and each host runs `celeryd-admin join -` with its join string
    Then  `celeryd-admin check` is OK at every step on the client, over TLS
    And   200 tasks submitted from the client run on both workers, every one exactly once,
          though worker-a is stopped with tasks in flight, and the client gets all 200 results
    And   once the broker host runs `store-setup`, a result sent with --no-wait from the
          client is found from worker-b's host after the client exited

The steps share the four machines (module scope) and run in file order, as in README.md's
"Several machines" section, whose commands they are.
"""

import collections
import json
import re
import time
from datetime import datetime

import pytest

from tests.system import harness
from tests.system.conftest import _print_on_failure

SUBNET = "10.231.7"
HOSTS = {"broker": 1, "worker-a": 2, "worker-b": 3, "client": 4, "beat-c": 5}
BROKER_IP = f"{SUBNET}.{HOSTS['broker']}"
PACKAGES = {  # what each host installs from /root/debs (plus the archive's dependencies)
    "broker": ["python3-celeryd-pkg", "rabbitmq-server", "openssl"],
    "worker-a": ["python3-celeryd-pkg", "celeryd"],
    "worker-b": ["python3-celeryd-pkg", "celeryd"],
    "client": ["python3-celeryd-pkg", "celery-submit"],
    "beat-c": ["python3-celeryd-pkg", "celeryd"],  # a third scheduler host (its worker idles)
}
TASKS, TASK_SECONDS = 200, 0.5
OUT = "/root/results"
joined = {}  # join strings, from the broker host to the others: {(suite, host): string}


@pytest.fixture(scope="module", params=harness.SUITES, ids=harness.SUITES)
def hosts(request, prerequisites, debs):
    """The five booted machines of the suite on a bridge of their own: {role: Container}."""
    with harness.Bridge(subnet=SUBNET) as bridge:
        machines = {}
        try:
            for role, number in HOSTS.items():
                machine = harness.Container(request.param, network_bridge=bridge.name,
                                            address=bridge.address(number))
                machines[role] = machine
                machine.prepare(debs, ["rabbitmq-server", "openssl", "redis-server"])
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


def install(machine, role):
    """apt-get install the role's packages, the local debs by path, without recommends."""
    local = {"python3-celeryd-pkg", "celeryd", "celery-submit"}
    names = [f"./{name}_*.deb" if name in local else name for name in PACKAGES[role]]
    machine.run(f"cd {machine.deb_dir} && apt-get install -y -q --no-install-recommends "
                f"{' '.join(names)}", timeout=900)


def admin(machine, *args, input=None):
    result = machine.run(["celeryd-admin", *args], check=False, timeout=300, input=input)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def worker_log(machine):
    return machine.journal(unit="celery-worker")


def succeeded(log):
    return re.findall(r"Task celeryd\.sleep\[([0-9a-f-]+)\] succeeded", log)


def test_broker_host_sets_up_tls_and_issues_a_join_string_per_host(hosts):
    broker = hosts["broker"]
    install(broker, "broker")
    admin(broker, "tls-setup", "--name", BROKER_IP)
    # tls-setup restarted RabbitMQ with its TLS listener: the port answers a TLS handshake.
    handshake = broker.run(["python3", "-c", f"import socket, ssl; s = ssl.create_default_context("
                            f"cafile='/etc/celeryd/tls/ca.pem').wrap_socket(socket.create_"
                            f"connection(('{BROKER_IP}', 5671), 10), server_hostname="
                            f"'{BROKER_IP}'); print(s.version())"])
    assert handshake.stdout == "TLSv1.3\n"
    for host, role in (("worker-a", "worker"), ("worker-b", "worker"), ("client", "client")):
        result = admin(broker, "provision", "--for-host", host, "--role", role,
                       "--broker-host", BROKER_IP)
        assert result.stderr == ""
        assert result.stdout.startswith(f"amqps://{role}-{host}:")
        assert f"@{BROKER_IP}:5671/celery?ca=" in result.stdout
        joined[broker.suite, host] = result.stdout
    users = broker.run(["rabbitmqctl", "-q", "list_users"]).stdout
    assert {"worker-worker-a", "worker-worker-b", "client-client"} <= set(users.split())
    assert "guest" not in broker.run(["rabbitmqctl", "-q", "list_permissions", "-p",
                                      "celery"]).stdout


@pytest.mark.parametrize("host", ["worker-a", "worker-b"])
def test_worker_host_joins_and_its_worker_consumes_over_tls(hosts, host):
    machine = hosts[host]
    install(machine, host)
    result = admin(machine, "join", "-", input=joined[machine.suite, host])
    assert result.stderr == ""
    assert result.stdout.startswith(f"joined amqps://worker-{host}:***@{BROKER_IP}:5671/celery")
    credentials = machine.run(["cat", "/etc/celeryd/credentials"]).stdout
    password = json.loads(credentials[credentials.index("{"):])["broker"]["password"]
    assert len(password) >= 32
    assert password in joined[machine.suite, host]
    assert machine.run(["stat", "-c", "%U:%G %a", "/etc/celeryd/credentials"]).stdout == \
        "root:celery 640\n"
    allowed = machine.run(["systemctl", "show", "-p", "IPAddressAllow", "--value",
                           "celery-worker"]).stdout
    assert BROKER_IP in allowed, allowed
    machine.run(["systemctl", "start", "celery-worker"], timeout=180)
    status = machine.run(["systemctl", "show", "-p", "StatusText", "--value",
                          "celery-worker"]).stdout
    assert status.startswith(f"Consuming from celery on amqps://worker-{host}:***@{BROKER_IP}"
                             f":5671/celery; concurrency 2"), status
    assert "warning" not in worker_log(machine)


def test_client_host_joins_and_check_is_ok_at_every_step_over_tls(hosts):
    client = hosts["client"]
    install(client, "client")
    admin(client, "join", "-", input=joined[client.suite, "client"])
    check = admin(client, "check")
    lines = check.stdout.splitlines()
    assert [line[:5] for line in lines] == ["OK   "] * 7, check.stdout
    assert f"logged in at {BROKER_IP}:5671 over TLSv1.3" in check.stdout
    assert "OK   workers: 2 consuming queue 'celery'" in check.stdout
    add = client.run(["celery-submit", "add", "4", "4"], timeout=120)
    assert (add.stdout, add.stderr) == ("8\n", "")


def test_200_tasks_run_on_both_workers_exactly_once_though_worker_a_stops_mid_run(hosts):
    client, worker_a, worker_b = hosts["client"], hosts["worker-a"], hosts["worker-b"]
    # Each task sleeps 0.5 s plus a unique micro-offset, which it returns: result i is
    # recognisably task i's. 100 celery-submit processes at a time, each waiting for its own.
    script = (f"mkdir -p {OUT} && seq -w 1 {TASKS} | xargs -P 100 -I@ sh -c "
              f"'celery-submit sleep {TASK_SECONDS}00@ --json --timeout 600 "
              f">{OUT}/@.json 2>{OUT}/@.err; echo $? >{OUT}/@.rc'")
    client.run(["systemd-run", "--unit=submit-200", "--", "sh", "-c", script])
    started = time.monotonic()

    def done_on(machine):
        return len(succeeded(worker_log(machine)))

    deadline = started + 120
    while done_on(worker_a) < 40:
        assert time.monotonic() < deadline, "worker-a ran fewer than 40 tasks in 120 s"
        time.sleep(0.5)
    in_flight = worker_a.run(["systemctl", "show", "-p", "StatusText", "--value",
                              "celery-worker"]).stdout
    worker_a.run(["systemctl", "stop", "celery-worker"], timeout=660)
    stopped_at = time.monotonic() - started
    assert worker_a.run(["systemctl", "is-active", "celery-worker"], check=False).stdout \
        == "inactive\n"

    def finished():
        count = client.run(f"ls {OUT} | grep -c '\\.rc$' || true").stdout.strip()
        return int(count or 0) == TASKS

    deadline = time.monotonic() + 600
    while not finished():
        assert time.monotonic() < deadline, "the client did not get all results in 600 s"
        time.sleep(1)
    elapsed = time.monotonic() - started

    outcomes = {}
    for number in range(1, TASKS + 1):
        name = f"{number:0{len(str(TASKS))}d}"
        rc = client.run(["cat", f"{OUT}/{name}.rc"]).stdout.strip()
        body = client.run(["cat", f"{OUT}/{name}.json", f"{OUT}/{name}.err"]).stdout
        assert rc == "0", f"task {name}: exit {rc}: {body}"
        outcome = json.loads(body)
        assert outcome["state"] == "SUCCESS"
        assert outcome["result"] == float(f"{TASK_SECONDS}00{name}"), outcome
        outcomes[outcome["id"]] = outcome
    assert len(outcomes) == TASKS  # 200 distinct task ids, 200 results

    runs = collections.Counter()
    split = {}
    for host, machine in (("worker-a", worker_a), ("worker-b", worker_b)):
        ids = succeeded(worker_log(machine))
        split[host] = len(ids)
        runs.update(ids)
    twice = {task_id: n for task_id, n in runs.items() if n > 1}
    print(f"\nmulti-host {client.suite}: {TASKS} tasks in {elapsed:.1f}s; worker-a stopped after "
          f"{stopped_at:.1f}s ({in_flight.strip()}); split {split}; ran twice: {len(twice)}")
    assert set(runs) == set(outcomes), "a task ran that the client did not submit, or not at all"
    assert not twice, f"tasks ran more than once: {twice}"
    assert split["worker-a"] >= 40 and split["worker-b"] >= 40, split
    assert re.search(r", [1-9]\d* in flight$", in_flight.strip()), in_flight


def test_plain_amqp_across_hosts_works_but_warns_unless_allowed(hosts):
    client = hosts["client"]
    plain = "CELERYD_BROKER_TLS=false CELERYD_BROKER_PORT=5672 "
    warned = client.run(plain + "celery-submit add 2 3", timeout=120)
    assert warned.stdout == "5\n"
    assert warned.stderr.startswith(f"celeryd: warning: broker {BROKER_IP} is not on this host "
                                    f"and broker.tls is off")
    allowed = client.run(plain + "CELERYD_BROKER_ALLOW_PLAIN=true celery-submit add 2 3",
                         timeout=120)
    assert (allowed.stdout, allowed.stderr) == ("5\n", "")


def test_a_named_instance_serves_its_own_queue_from_its_overlay(hosts):
    worker_b, client = hosts["worker-b"], hosts["client"]
    worker_b.run("printf 'worker:\\n  queues: [reports]\\n  concurrency: 1\\n' "
                 ">/etc/celeryd/conf.d/@reports.yaml")
    worker_b.run(["systemctl", "enable", "--now", "celery-worker@reports"], timeout=180)
    status = worker_b.run(["systemctl", "show", "-p", "StatusText", "--value",
                           "celery-worker@reports"]).stdout
    assert status.startswith("Consuming from reports on amqps://"), status
    result = client.run(["celery-submit", "--queue", "reports", "--json", "echo", "hello"],
                        timeout=120)
    outcome = json.loads(result.stdout)
    assert outcome["result"] == "hello"
    # Celery logs the success after it sent the result, and journald writes a moment later.
    harness.wait_until(lambda: f"[{outcome['id']}] succeeded" in worker_b.journal(
        unit="celery-worker@reports"), 20, "the reports worker's success line")
    assert outcome["id"] not in worker_log(worker_b)  # the default worker did not run it


def test_status_on_a_worker_host_shows_the_fleet_and_names_a_stopped_worker(hosts):
    worker_a, worker_b = hosts["worker-a"], hosts["worker-b"]
    worker_a.run(["systemctl", "start", "celery-worker"], timeout=180)
    shown = admin(worker_b, "status")
    print(f"\nceleryd-admin status on worker-b ({worker_b.suite}):\n{shown.stdout}")
    fleet = json.loads(admin(worker_b, "status", "--json").stdout)
    nodes = {node["node"]: node for node in fleet["nodes"]}
    a, b = (machine.run(["hostname"]).stdout.strip() for machine in (worker_a, worker_b))
    assert set(nodes) == {f"celery@{a}", f"celery@{b}", f"reports@{b}"}, nodes
    assert {node["state"] for node in nodes.values()} == {"up"}
    assert nodes[f"reports@{b}"]["instance"] == "reports"
    assert nodes[f"celery@{b}"]["succeeded"] >= 1  # the tasks of the steps before
    queues = {queue["name"]: queue for queue in fleet["queues"]}
    assert queues["celery"]["consumers"] == 2 and queues["reports"]["consumers"] == 1, queues
    assert fleet["verdict"] == "OK", fleet

    worker_a.run(["systemctl", "stop", "celery-worker"], timeout=660)
    stopped = worker_b.run(["celeryd-admin", "status"], check=False, timeout=120)
    print(stopped.stdout)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    verdict = stopped.stdout.splitlines()[-1]
    assert verdict.startswith("DEGRADED") and f"celery@{a}" in verdict, verdict


TRACE_TASKS = '''\
from celery import shared_task
from celery.utils.log import get_task_logger

logger = get_task_logger(__name__)


@shared_task(name="tracetasks.greet")
def greet(who):
    logger.info("greeting %s", who)
    if who == "nobody":
        raise ValueError("nobody to greet")
    return f"hello {who}"
'''


def journal_entries(machine, task_id):
    """The journal entries with CELERY_TASK_ID=task_id on machine, as dicts, once its last
    one (SUCCESS or FAILURE) is there: journald writes them a moment after the worker sends
    them."""
    def finished():
        out = machine.run(["journalctl", "-o", "json", f"CELERY_TASK_ID={task_id}"],
                          check=False).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        states = {entry.get("CELERY_TASK_STATE") for entry in entries}
        return entries if {"SUCCESS", "FAILURE"} & states else None

    return harness.wait_until(finished, 20, f"the journal's last entry of task {task_id}")


def test_task_lines_carry_their_id_in_the_journal_and_trace_finds_them(hosts):
    worker_b, client = hosts["worker-b"], hosts["client"]
    worker_b.run(["mkdir", "-p", "/srv/tracetasks"])
    worker_b.run("cat > /srv/tracetasks/tracetasks.py", input=TRACE_TASKS)
    worker_b.run("printf 'tasks:\\n  modules: [tracetasks]\\n  pythonpath: [/srv/tracetasks]\\n' "
                 ">/etc/celeryd/conf.d/50-tracetasks.yaml")
    harness.restart_worker(worker_b)
    greeted = client.run(["celery-submit", "--json", "tracetasks.greet", "world"], timeout=120)
    ok = json.loads(greeted.stdout)
    assert ok["result"] == "hello world"
    failed = client.run(["celery-submit", "--json", "tracetasks.greet", "nobody"],
                        check=False, timeout=120)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    bad = json.loads(failed.stdout)

    entries = journal_entries(worker_b, ok["id"])
    assert [e["CELERY_TASK_STATE"] for e in entries] == ["RECEIVED", "STARTED", "SUCCESS"]
    assert {e["CELERY_TASK_NAME"] for e in entries} == {"tracetasks.greet"}
    assert {e["_SYSTEMD_UNIT"] for e in entries} == {"celery-worker.service"}
    assert "greeting world" in entries[1]["MESSAGE"]
    failure = journal_entries(worker_b, bad["id"])[-1]
    assert failure["CELERY_TASK_STATE"] == "FAILURE" and failure["PRIORITY"] == "3"
    # The traceback is in the failure's one entry, not spread over many lines.
    assert "Traceback" in failure["MESSAGE"] and "ValueError: nobody to greet" in failure["MESSAGE"]

    traced = worker_b.run(["celeryd-admin", "trace", ok["id"], bad["id"]], check=False)
    print(f"\nceleryd-admin trace on worker-b ({worker_b.suite}):\n{traced.stdout}{traced.stderr}")
    assert traced.returncode == 0, traced.stdout + traced.stderr
    states = [line.split()[4] for line in traced.stdout.splitlines() if not line[0].isspace()]
    assert states == ["RECEIVED", "STARTED", "SUCCESS", "RECEIVED", "STARTED", "FAILURE"]
    traced_json = json.loads(worker_b.run(["celeryd-admin", "trace", "--json", ok["id"]]).stdout)
    hostname = worker_b.run(["hostname"]).stdout.strip()
    assert {(e["id"], e["host"], e["unit"]) for e in traced_json} == {
        (ok["id"], hostname, "celery-worker.service")}
    # The client host's journal holds nothing of it, and trace says so.
    elsewhere = client.run(["celeryd-admin", "trace", ok["id"]], check=False)
    assert elsewhere.returncode == 1 and elsewhere.stdout == ""
    assert f"no journal entry for task {ok['id']} on this host" in elsewhere.stderr


def test_a_result_kept_in_the_store_is_found_from_another_host_after_the_sender_exited(hosts):
    broker, worker_b, client = hosts["broker"], hosts["worker-b"], hosts["client"]
    broker.run(["apt-get", "install", "--no-download", "-y", "-q", "redis-server"], timeout=600)
    # The broker host has no celeryd, so no group celery: its own login is root's.
    made = admin(broker, "store-setup", "--group", "root")
    assert made.stdout.startswith("celeryd-admin: result store ready (redis-server port 6379 "
                                  "and TLS port 6380, account 'celery'): "), made.stdout
    for host, role in (("worker-b", "worker"), ("client", "client")):
        string = admin(broker, "provision", "--for-host", host, "--role", role,
                       "--broker-host", BROKER_IP).stdout
        assert "&results=" in string
        rejoined = admin(hosts[host], "join", "-", input=string)
        assert "with results kept in the result store there" in rejoined.stdout
    harness.restart_worker(worker_b)  # it reads results.* and its login at start
    # The client sends and is gone; the id it printed is all anybody keeps.
    task_id = client.run(["celery-submit", "add", "20", "22", "--no-wait"],
                         timeout=120).stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id), task_id
    # Another host looks it up: worker-b's account may read results too.
    looked_up = worker_b.run(["python3", "-m", "celeryd_pkg.submit", "result", task_id,
                              "--wait", "30"], check=False, timeout=120)
    assert (looked_up.returncode, looked_up.stdout) == (0, "42\n"), looked_up.stderr
    again = client.run(["celery-submit", "result", "--json", task_id], check=False)
    assert json.loads(again.stdout)["result"] == 42, again.stderr
    waited = client.run(["celery-submit", "add", "1", "1"], check=False, timeout=120)
    assert (waited.returncode, waited.stdout) == (0, "2\n"), waited.stderr
    check = admin(client, "check")
    assert f"OK   store: logged in at rediss://client-client:***@{BROKER_IP}:6380/0" in \
        check.stdout, check.stdout


BEAT_CONFIG = """\
beat:
  entries:
    tick: {task: celeryd.add, args: [1, 1], every: 2, queue: beat-proof}
"""
# Run on a worker host: declares the queue nobody consumes that the beat sends to ("declare"),
# or prints what is in it ("drain"): [[entry, slot, task id], ...].
PROOF = """
import json, sys
from celeryd_pkg import broker, config
connection = broker.connect(config.load())
channel = connection.channel()
channel.queue_declare("beat-proof", durable=True)
sent = []
while sys.argv[1] == "drain" and (message := channel.basic_get("beat-proof", no_ack=True)):
    headers = message.properties["application_headers"]
    sent.append([headers["beat_entry"], headers["beat_slot"], headers["id"]])
print(json.dumps(sent))
broker.close(connection)
"""
BEAT_HOSTS = ("worker-a", "worker-b", "beat-c")


def beat_status(machine):
    return json.loads(machine.run(["celeryd-admin", "status", "--json", "--timeout", "0.5"],
                                  check=False, timeout=60).stdout)["beat"]


def wait_for_beat_leader(machine, besides=None, timeout=60):
    """(host name, epoch seconds it took the lead) of the scheduler that leads, as
    celeryd-admin status on machine names it, once one other than besides does."""
    def leader():
        beat = beat_status(machine)
        if beat and beat["leading"] and beat["since"] and beat["leader"] != besides:
            return beat["leader"], datetime.fromisoformat(beat["since"]).timestamp()
        return None
    return harness.wait_until(leader, timeout, "a celery-beat leader")


def test_beat_on_three_hosts_one_leads_every_slot_once_though_the_leader_is_cut_off(hosts):
    broker, worker_b = hosts["broker"], hosts["worker-b"]
    beat_c = hosts["beat-c"]
    install(beat_c, "beat-c")
    string = admin(broker, "provision", "--for-host", "beat-c", "--role", "worker",
                   "--broker-host", BROKER_IP).stdout
    admin(beat_c, "join", "-", input=string)
    worker_b.run(["python3", "-c", PROOF, "declare"])
    machines = {}
    for role in BEAT_HOSTS:
        machine = hosts[role]
        machine.run("cat > /etc/celeryd/conf.d/60-beat.yaml && chmod 644 "
                    "/etc/celeryd/conf.d/60-beat.yaml", input=BEAT_CONFIG)
        machine.run(["systemctl", "enable", "--now", "celery-beat"], timeout=120)
        machines[machine.run(["hostname"]).stdout.strip()] = machine
    first, _ = wait_for_beat_leader(worker_b)
    statuses = {name: machine.run(["systemctl", "show", "-p", "StatusText", "--value",
                                   "celery-beat"]).stdout for name, machine in machines.items()}
    assert sum(text.startswith("Leading") for text in statuses.values()) == 1, statuses
    time.sleep(10)
    leader = machines[first]
    observer = next(m for name, m in machines.items() if name != first)
    cut = time.time()
    leader.cut_off()
    try:
        second, since = wait_for_beat_leader(observer, besides=first, timeout=120)
        took = since - cut  # the hosts share this machine's clock
        time.sleep(max(0.0, 45 - (time.time() - cut)))
    finally:
        leader.cut_off(False)
    # Back on the network, the old leader finds its lead gone and stands by.
    harness.wait_until(lambda: "lost the lead" in leader.journal(unit="celery-beat"), 60,
                       "the old leader to notice")
    time.sleep(5)
    # A clean stop of the new leader: the next one catches up, no slot lost.
    stopped = time.time()
    machines[second].run(["systemctl", "stop", "celery-beat"], timeout=60)
    third, since = wait_for_beat_leader(
        observer if observer is not machines[second] else leader, besides=second)
    handed = since - stopped
    time.sleep(6)
    for machine in machines.values():
        machine.run(["systemctl", "disable", "--now", "celery-beat"], timeout=60)
    sent = json.loads(worker_b.run(["python3", "-c", PROOF, "drain"]).stdout)

    fires = collections.Counter(slot for _, slot, _ in sent)
    slots = sorted(fires)
    every = [slots[0] + 2 * n for n in range(int((slots[-1] - slots[0]) / 2) + 1)]
    missing = [slot for slot in every if slot not in fires]
    table = collections.Counter(fires[slot] for slot in every)
    print(f"\nbeat {broker.suite}: {len(every)} slots of every: 2 over "
          f"{slots[-1] - slots[0]:.0f} s: fired once {table[1]}, twice {table[2]}, "
          f"never {table[0]}; leader {first} cut off, {second} led {took:.1f} s later; "
          f"{second} stopped, {third} led {handed:.1f} s later; missing "
          f"{[time.strftime('%H:%M:%S', time.gmtime(s)) for s in missing]}, cut at "
          f"{time.strftime('%H:%M:%S', time.gmtime(cut))}")
    assert not [slot for slot, n in fires.items() if n > 1], fires
    assert all(cut - 2 < slot <= cut + took + 2 for slot in missing), (missing, cut, took)
    # beat.heartbeat 5: RabbitMQ drops a silent connection within 3 heartbeats, and a standby
    # tries every second.
    assert took <= 3 * 5 + 1 + 1
    assert len(every) >= 28 and third != second


def test_purge_on_a_worker_host_takes_its_join_with_it(hosts):
    worker_a = hosts["worker-a"]
    worker_a.run(["apt-get", "purge", "-y", "-q", "celeryd"], timeout=600)
    left = worker_a.run("ls -d /etc/celeryd /etc/systemd/system/celery-worker*.service.d "
                        "2>/dev/null || true").stdout
    assert left == ""
