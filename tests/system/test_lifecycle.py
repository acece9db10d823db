"""The package's life on one booted machine per suite, step by step, as an operator lives it.

    Given a booted <suite> machine without a broker
    When  the admin installs the three debs, then RabbitMQ (the setup then finishes by itself)
    Then  `celery-submit add 4 4` prints 8
    And   reload, restart, stop, SIGKILL, a broker restart and a hung loop lose no task
    And   reinstall and upgrade keep credentials and local edits; remove keeps config;
          purge leaves nothing of ours

    | suite    |
    | trixie   |
    | bookworm |

The steps share one machine (module scope) and run in file order: each starts from where
the one before left the machine, as on a real host.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import time

import pytest

import celeryd_pkg

from tests.system import harness
from tests.system.harness import wait_until
from tests.system.conftest import REPO, _print_on_failure
from tests.system.test_install import assert_active

CREDENTIALS = "/etc/celeryd/credentials"
CONFIG = "/etc/celeryd/celeryd.yaml"
UPGRADE_DIR = "/root/upgrade"
VERSION = celeryd_pkg.__version__  # = debian/changelog's (tests/unit/test_packaging.py)
UPGRADE_VERSION = f"{VERSION}+systest1"
HINT = ("celeryd: no running RabbitMQ broker here; the setup finishes by itself when "
        "rabbitmq-server starts here, or run: celeryd-admin provision (or celeryd-admin join "
        "for a remote broker)")


@pytest.fixture(scope="session")
def upgrade_debs(debs):
    """The same packages rebuilt with a higher version, to upgrade to."""
    source = os.path.join(REPO, "build", "src", f"celeryd-{VERSION}")
    target = os.path.join(REPO, "build", "upgrade", f"celeryd-{UPGRADE_VERSION}")
    shutil.rmtree(os.path.dirname(target), ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".debhelper", "files"))
    changelog = os.path.join(target, "debian", "changelog")
    with open(changelog) as f:
        old = f.read()
    with open(changelog, "w") as f:
        f.write(f"celeryd ({UPGRADE_VERSION}) unstable; urgency=medium\n\n"
                f"  * System-test build to upgrade to.\n\n"
                f" -- celeryd developers <celeryd@example.org>  Wed, 25 Nov 2026 12:00:00 +0000"
                f"\n\n{old}")
    build = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=target,
                           capture_output=True, text=True)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    parent = os.path.dirname(target)
    return sorted(os.path.join(parent, name) for name in os.listdir(parent)
                  if name.endswith(".deb"))


@pytest.fixture(scope="module", params=harness.SUITES, ids=harness.SUITES)
def machine(request, prerequisites, debs, upgrade_debs):
    """A booted machine of the suite with the debs in /root/debs, the upgrade debs in
    /root/upgrade, and everything for an offline install of rabbitmq-server cached."""
    with harness.Container(request.param) as container:
        container.prepare(debs, ["rabbitmq-server"])
        os.makedirs(container.root + UPGRADE_DIR)
        for deb in upgrade_debs:
            shutil.copy2(deb, container.root + UPGRADE_DIR)
        container.boot()
        yield container


@pytest.fixture(autouse=True)
def journal_on_failure(request, machine):
    yield
    _print_on_failure(request, machine)


def show(machine, prop, unit="celery-worker"):
    return machine.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()


def submit(machine, *args, user=None, check=True):
    result = machine.run(["celery-submit", *args], check=False, timeout=120, user=user)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def in_background(machine, *args):
    """Start celery-submit inside the machine without waiting for it."""
    return subprocess.Popen(["nsenter", "-t", str(machine.pid), "-a", "--", "celery-submit", *args],
                            env=harness.ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def received(machine, task="celeryd.sleep"):
    log = machine.journal(unit="celery-worker")
    return re.findall(rf"Task {re.escape(task)}\[([0-9a-f-]+)\] received", log)


def sleep_task_in_flight(machine, seconds):
    """Submit a sleep task and return (client process, task id) once the worker has it."""
    before = len(received(machine))
    client = in_background(machine, "sleep", str(seconds), "--json", "--timeout", "120")
    ids = wait_until(lambda: received(machine)[before:], 30, "the sleep task to be received")
    return client, ids[0]


def succeeded(machine, task_id):
    return machine.journal(unit="celery-worker").count(f"[{task_id}] succeeded")


def sha256(machine, path):
    return hashlib.sha256(machine.run(["cat", path]).stdout.encode()).hexdigest()


def stat(machine, path):
    return machine.run(["stat", "-c", "%U:%G %a", path]).stdout.strip()


def test_install_without_a_broker_succeeds_with_the_one_line_hint(machine):
    # Without recommends: rabbitmq-server is one, and here the broker comes later.
    install = machine.run(f"cd {machine.deb_dir} && apt-get install -y --no-install-recommends "
                          f"./*.deb", timeout=600)
    output = install.stdout + install.stderr
    assert output.count(HINT) == 1, output[-2000:]
    assert machine.run(["test", "-e", CREDENTIALS], check=False).returncode == 1
    assert show(machine, "ActiveState") == "inactive"
    assert show(machine, "UnitFileState") == "enabled"
    # The scheduler runs only where the operator enables it.
    assert show(machine, "UnitFileState", "celery-beat") == "disabled"
    assert show(machine, "ActiveState", "celery-beat") == "inactive"


def test_the_setup_finishes_by_itself_when_the_broker_arrives_then_adds_4_4(machine):
    machine.run(["apt-get", "install", "--no-download", "-y", "rabbitmq-server"], timeout=600)
    assert_active(machine, "rabbitmq-server")
    # celeryd-provision.service, wanted by rabbitmq-server.service: account, credentials and
    # the worker's start, with nobody running a command.
    wait_until(lambda: show(machine, "ActiveState") == "active", 120, "celery-worker to start")
    assert show(machine, "Result", "celeryd-provision") == "success"
    # Running provision by hand afterwards is a quiet no-op.
    provision = machine.run(["celeryd-admin", "provision"], timeout=300)
    assert (provision.stdout, provision.stderr) == ("", "")  # quiet on success
    assert stat(machine, CREDENTIALS) == "root:celery 640"
    machine.run(["systemctl", "start", "celery-worker"], timeout=120)
    assert_active(machine, "celery-worker")
    assert submit(machine, "add", "4", "4").stdout == "8\n"
    assert show(machine, "StatusText").startswith("Consuming from celery on amqp://celery:***@")


def test_reload_applies_a_config_change_and_loses_no_task(machine):
    pid = show(machine, "MainPID")
    client, task_id = sleep_task_in_flight(machine, 5)
    machine.run(["sed", "-i", "s/^#  concurrency: 2$/  concurrency: 3/", CONFIG])
    machine.run(["systemctl", "reload", "celery-worker"], timeout=120)
    wait_until(lambda: "concurrency 3" in show(machine, "StatusText"), 60, "concurrency 3")
    assert show(machine, "MainPID") == pid
    assert "Reloading: taking no new tasks, finishing the 1 received" in machine.journal(
        unit="celery-worker")
    outcome = json.loads(client.communicate(timeout=120)[0])
    assert (outcome["state"], outcome["result"]) == ("SUCCESS", 5)
    assert succeeded(machine, task_id) == 1


@pytest.mark.parametrize("action", ["restart", "stop"])
def test_a_task_in_flight_survives_restart_and_stop_and_completes_once(machine, action):
    client, task_id = sleep_task_in_flight(machine, 10)
    finishing = "Stopping: taking no new tasks, finishing the 1 received"
    before = machine.journal(unit="celery-worker").count(finishing)
    started = time.monotonic()
    machine.run(["systemctl", action, "celery-worker"], timeout=700)
    assert time.monotonic() - started >= 5  # the stop waited for the task (warm shutdown)
    # celeryd's own stop (stopping.py), in front of Celery's on this suite's Celery too.
    assert machine.journal(unit="celery-worker").count(finishing) == before + 1
    if action == "stop":
        assert show(machine, "ActiveState") == "inactive"
        machine.run(["systemctl", "start", "celery-worker"], timeout=120)
    outcome = json.loads(client.communicate(timeout=120)[0])
    assert (outcome["state"], outcome["result"]) == ("SUCCESS", 10)
    assert succeeded(machine, task_id) == 1
    assert_active(machine, "celery-worker")


def test_sigkill_of_the_worker_is_restarted_by_systemd(machine):
    pid, restarts = show(machine, "MainPID"), int(show(machine, "NRestarts"))
    machine.run(["kill", "-KILL", pid])
    wait_until(lambda: show(machine, "MainPID") not in ("0", pid), 60, "a new main PID")
    assert_active(machine, "celery-worker")
    assert int(show(machine, "NRestarts")) == restarts + 1
    assert submit(machine, "add", "4", "4").stdout == "8\n"


def test_a_broker_restart_keeps_the_worker_active_and_it_reconnects(machine):
    pid = show(machine, "MainPID")
    restart = subprocess.Popen(["nsenter", "-t", str(machine.pid), "-a", "--", "systemctl",
                                "restart", "rabbitmq-server"], env=harness.ENV)
    states, statuses = set(), set()
    while restart.poll() is None:
        states.add(show(machine, "ActiveState"))
        statuses.add(show(machine, "StatusText"))
        time.sleep(0.2)
    assert restart.returncode == 0
    wait_until(lambda: show(machine, "StatusText").startswith("Consuming"), 90, "reconnection")
    assert states == {"active"} and show(machine, "MainPID") == pid
    # systemd saw the outage in STATUS= while it lasted.
    assert any(s.startswith("Broker connection lost; reconnecting to amqp://celery:***@")
               for s in statuses), statuses
    assert submit(machine, "add", "4", "4").stdout == "8\n"


def test_a_hung_worker_is_restarted_by_the_watchdog(machine):
    dropin = "/run/systemd/system/celery-worker.service.d"
    machine.run(["mkdir", "-p", dropin])
    machine.run(["sh", "-c", f"printf '[Service]\\nWatchdogSec=4\\nTimeoutAbortSec=2\\n' "
                             f"> {dropin}/watchdog-test.conf"])
    try:
        machine.run(["systemctl", "daemon-reload"])
        machine.run(["systemctl", "restart", "celery-worker"], timeout=120)
        pid = show(machine, "MainPID")
        time.sleep(6)  # healthy: pings keep it alive past WatchdogSec
        assert show(machine, "MainPID") == pid
        machine.run(["kill", "-STOP", pid])  # the event loop hangs
        wait_until(lambda: show(machine, "MainPID") not in ("0", pid), 60, "a watchdog restart")
        assert "Watchdog timeout" in machine.journal(unit="celery-worker")
    finally:
        machine.run(["rm", "-rf", dropin])
        machine.run(["systemctl", "daemon-reload"])
        machine.run(["systemctl", "restart", "celery-worker"], timeout=120)
    assert_active(machine, "celery-worker")
    assert submit(machine, "add", "4", "4").stdout == "8\n"


def test_a_user_outside_group_celery_gets_exit_3_and_the_group_hint(machine):
    machine.run(["useradd", "--create-home", "outsider"])
    result = submit(machine, "add", "4", "4", user="outsider", check=False)
    assert result.returncode == 3
    assert result.stderr.startswith(f"celeryd: {CREDENTIALS}: permission denied; it is readable "
                                    f"by group 'celery'")
    assert "adduser $USER celery" in result.stderr


def test_security_exposure_is_within_the_recorded_target(machine):
    # One "UNIT TARGET" line per worker unit; the template is measured through an instance,
    # which systemd loads for the query without starting it.
    with open(os.path.join(REPO, "tests", "system", "expected-security.txt")) as f:
        targets = dict(line.split() for line in f if line.strip() and not line.startswith("#"))
    assert sorted(targets) == ["celery-beat.service", "celery-worker.service",
                               "celery-worker@.service"]
    scores = {}
    for unit in targets:
        measured = unit.replace("@.", "@security.")
        out = machine.run(["systemd-analyze", "security", "--no-pager", measured],
                          check=False).stdout
        scores[unit] = float(re.search(rf"Overall exposure level for {re.escape(measured)}: "
                                       r"([0-9.]+)", out).group(1))
        print(f"{machine.suite}: systemd-analyze security {measured} = {scores[unit]}")
    for unit, score in scores.items():
        assert score <= float(targets[unit]) <= 0.9, unit


BEAT_DROPIN = "/etc/celeryd/conf.d/60-beat.yaml"


def beat_entry(machine, every):
    machine.run(f"cat > {BEAT_DROPIN} && chmod 644 {BEAT_DROPIN}",
                input=f"beat:\n  entries:\n    tick: {{task: celeryd.add, args: [2, 2], "
                      f"every: {every}}}\n")


def test_celery_beat_enabled_leads_sends_its_entry_and_refuses_a_bad_reload(machine):
    beat_entry(machine, 1)
    machine.run(["systemctl", "enable", "--now", "celery-beat"], timeout=120)
    assert show(machine, "StatusText", "celery-beat").startswith("Leading since "), \
        machine.journal(unit="celery-beat")
    wait_until(lambda: len(received(machine, "celeryd.add")) >= 3, 30, "3 adds from the beat")
    assert stat(machine, "/var/lib/celeryd/beat-state.json") == "celery:celery 640"
    pid = show(machine, "MainPID", "celery-beat")
    beat_entry(machine, -1)
    machine.run(["systemctl", "reload", "celery-beat"])
    wait_until(lambda: "reload refused" in machine.journal(unit="celery-beat"), 30,
               "the bad reload to be refused")
    assert "beat.entries.tick.every: must be at least 1 second" in \
        machine.journal(unit="celery-beat")
    assert_active(machine, "celery-beat")
    beat_entry(machine, 2)
    machine.run(["systemctl", "reload", "celery-beat"])
    wait_until(lambda: "reloaded: 1 entries" in machine.journal(unit="celery-beat"), 30,
               "the reload")
    assert show(machine, "MainPID", "celery-beat") == pid
    assert_active(machine, "celery-beat")


def test_reinstall_keeps_credentials_and_local_edits(machine):
    credentials = sha256(machine, CREDENTIALS)
    machine.run(f"cd {machine.deb_dir} && apt-get install --reinstall -y ./*.deb", timeout=600)
    assert sha256(machine, CREDENTIALS) == credentials
    assert stat(machine, CREDENTIALS) == "root:celery 640"
    assert "  concurrency: 3" in machine.run(["cat", CONFIG]).stdout
    assert_active(machine, "celery-worker")
    assert submit(machine, "add", "4", "4").stdout == "8\n"


def test_upgrade_keeps_credentials_and_local_edits_and_restarts_the_worker(machine):
    credentials, pid = sha256(machine, CREDENTIALS), show(machine, "MainPID")
    beat_pid = show(machine, "MainPID", "celery-beat")
    machine.run(f"cd {UPGRADE_DIR} && apt-get install -y ./*.deb", timeout=600)
    version = machine.run(["dpkg-query", "-W", "-f", "${Version}", "celeryd"]).stdout
    assert version == UPGRADE_VERSION
    assert sha256(machine, CREDENTIALS) == credentials
    assert stat(machine, CREDENTIALS) == "root:celery 640"
    assert "  concurrency: 3" in machine.run(["cat", CONFIG]).stdout
    assert_active(machine, "celery-worker")
    assert show(machine, "MainPID") != pid  # the new code runs
    assert submit(machine, "add", "4", "4").stdout == "8\n"
    # The scheduler enabled above was running: it runs the new code too.
    assert show(machine, "MainPID", "celery-beat") != beat_pid
    assert show(machine, "StatusText", "celery-beat").startswith("Leading since ")


def test_remove_keeps_config_credentials_and_the_broker_account(machine):
    machine.run(["apt-get", "remove", "-y", "celeryd"], timeout=600)
    assert show(machine, "ActiveState") == "inactive"
    assert show(machine, "ActiveState", "celery-beat") == "inactive"
    for path in (CONFIG, CREDENTIALS, "/var/lib/celeryd"):
        assert machine.run(["test", "-e", path], check=False).returncode == 0, path
    assert "celery" in machine.run(["rabbitmqctl", "-q", "list_users"]).stdout.split()


def test_purge_leaves_nothing_of_ours(machine):
    machine.run(["apt-get", "purge", "-y", "celeryd", "celery-submit", "python3-celeryd-pkg"],
                timeout=600)
    gone = ["/etc/celeryd", "/var/lib/celeryd", "/lib/systemd/system/celery-worker.service",
            "/lib/systemd/system/celery-beat.service",
            "/etc/systemd/system/multi-user.target.wants/celery-beat.service",
            "/lib/systemd/system/celery-worker@.service", "/usr/bin/celery-submit",
            "/usr/sbin/celeryd-admin", "/usr/lib/python3/dist-packages/celeryd_pkg",
            "/etc/systemd/system/multi-user.target.wants/celery-worker.service",
            "/lib/systemd/system/celeryd-provision.service",
            "/lib/systemd/system-generators/celeryd-generator",
            "/lib/systemd/system/rabbitmq-server.service.d/celeryd.conf",
            "/usr/lib/sysusers.d/celeryd.conf", "/var/cache/celeryd"]
    left = [path for path in gone if machine.run(["test", "-e", path], check=False).returncode == 0]
    assert left == []
    assert machine.run(["getent", "passwd", "celery"], check=False).returncode == 2
    assert machine.run(["getent", "group", "celery"], check=False).returncode == 2
    assert "celery" not in machine.run(["rabbitmqctl", "-q", "list_users"]).stdout.split()
    packages = machine.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n"]).stdout
    assert not re.search(r"(celeryd|celery-submit)", packages)
