"""Users upgrade from what they have, and a client-only purge leaves nothing of ours.

    Given a booted <suite> machine without a broker
    When  the admin installs only celery-submit, joins a remote TLS broker, then purges it
    Then  no /etc/celeryd (credentials, CA), no group celery and none of our packages is left
    Given the same machine with the previous release (built from its release commit) and RabbitMQ,
          a conffile edit, a conf.d overlay for celery-worker@reports and join's drop-ins
    When  the admin upgrades to the new build with `apt-get install ./*.deb`
    Then  credentials, edit, overlay and drop-ins are byte for byte what they were
    And   celery-worker and celery-worker@reports are enabled and run the new code (new PIDs)
    And   `celery-submit add 4 4` prints 8 and a task on queue reports runs on its instance

    | suite    |
    | trixie   |
    | bookworm |

The steps share one machine (module scope) and run in file order: each starts from where
the one before left the machine, as on a real host.
"""

import glob
import json
import os
import shutil
import ssl
import subprocess
import time

import pytest

import celeryd_pkg
from celeryd_pkg import joinparts

from tests.system import harness
from tests.system.conftest import PACKAGES, REPO, _print_on_failure
from tests.system.harness import wait_until
from tests.system.test_install import assert_active
from tests.system.test_lifecycle import CONFIG, CREDENTIALS, sha256, show, stat, submit

PREVIOUS = ("0.7.0", "6bc25f53ba1d92f2f0f00f3f60a48eac8d65a371")  # (version, its commit)
PREVIOUS_DIR = "/root/previous"
BROKER_IP = "10.9.9.9"  # a remote broker by address: join needs no DNS, nothing connects
CA = "/etc/celeryd/broker-ca.pem"
OVERLAY = "/etc/celeryd/conf.d/@reports.yaml"
DROPINS = tuple(f"/etc/systemd/system/{unit}.d/50-celeryd-broker.conf"
                for unit in ("celery-worker.service", "celery-worker@.service"))
WORKERS = ("celery-worker", "celery-worker@reports")
KEPT = (CREDENTIALS, CONFIG, OVERLAY, *DROPINS)
before = {}  # operator state recorded before the upgrade: {suite: {path or unit: value}}


@pytest.fixture(scope="session")
def previous_debs():
    """The three .debs of the previous release, built from its commit (not from this tree),
    cached in build/previous/COMMIT."""
    version, commit = PREVIOUS
    def known():
        return subprocess.run(["git", "-C", REPO, "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True).returncode == 0

    if not known():
        # A shallow clone: fetch just that commit from where the clone came from.
        subprocess.run(["git", "-C", REPO, "fetch", "-q", "--depth=1", "origin", commit],
                       capture_output=True, timeout=300)
    if not known():
        pytest.fail(f"celeryd {version}'s commit {commit} is not in {REPO} (a shallow clone? "
                    f"git fetch --unshallow)", pytrace=False)
    out = os.path.join(REPO, "build", "previous", commit)
    debs = sorted(glob.glob(os.path.join(out, f"*_{version}_all.deb")))
    if len(debs) == len(PACKAGES):
        return debs
    shutil.rmtree(out, ignore_errors=True)
    source = os.path.join(out, f"celeryd-{version}")
    os.makedirs(source)
    for cmd, cwd in ((["git", "-C", REPO, "archive", "-o", f"{out}/source.tar", commit], out),
                     (["tar", "-xf", f"{out}/source.tar", "-C", source], out),
                     (["dpkg-buildpackage", "-us", "-uc", "-b"], source)):
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode:
            pytest.fail(f"building celeryd {version}: {' '.join(cmd)} failed "
                        f"({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}",
                        pytrace=False)
    return sorted(glob.glob(os.path.join(out, f"*_{version}_all.deb")))


@pytest.fixture(scope="module", params=harness.SUITES, ids=harness.SUITES)
def machine(request, prerequisites, debs, previous_debs):
    """A booted machine of the suite with the new debs in /root/debs, the previous release's
    in /root/previous, and everything for an offline install of both and RabbitMQ cached."""
    with harness.Container(request.param) as container:
        container.prepare(debs, ["rabbitmq-server"])
        os.makedirs(container.root + PREVIOUS_DIR)
        local = [shutil.copy2(deb, container.root + PREVIOUS_DIR)[len(container.root):]
                 for deb in previous_debs]
        # The previous release's dependencies may differ from the new build's.
        started = time.monotonic()
        container.chroot(harness.APT + ["install", "-y", "--download-only", *local])
        container.timings["prepare previous"] = time.monotonic() - started
        container.boot()
        yield container
        print(f"\n{container.suite}: " + ", ".join(f"{step} {seconds:.1f}s" for step, seconds
                                                   in container.timings.items()))


@pytest.fixture(autouse=True)
def journal_on_failure(request, machine):
    yield
    _print_on_failure(request, machine)


def exists(machine, path):
    return machine.run(["test", "-e", path], check=False).returncode == 0


def versions(machine):
    """Return {package: version} of ours that dpkg knows as installed."""
    out = machine.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Package} ${Version}\n"],
                      check=False).stdout
    return {line.split()[1]: line.split()[2] for line in out.splitlines()
            if line.startswith("ii") and line.split()[1] in PACKAGES}


def test_a_client_only_host_joins_a_tls_broker(machine, tmp_path):
    machine.run(f"cd {machine.deb_dir} && apt-get install -y --no-install-recommends "
                f"./python3-celeryd-pkg_*.deb ./celery-submit_*.deb", timeout=600)
    assert not exists(machine, "/lib/systemd/system/celery-worker.service")
    cert = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", tmp_path / "ca.key",
                    "-out", cert, "-days", "1", "-subj", "/CN=celeryd test CA"],
                   check=True, capture_output=True)
    url = f"amqps://client-test:{'p' * 32}@{BROKER_IP}:5671/celery?ca={joinparts.encode_ca(cert)}"
    join = machine.run(["celeryd-admin", "join", "-"], check=False, input=url)
    assert (join.returncode, join.stderr) == (0, ""), join.stdout + join.stderr
    assert stat(machine, CREDENTIALS) == "root:celery 640"
    written = machine.run(["cat", CA]).stdout
    assert ssl.PEM_cert_to_DER_cert(written) == ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert machine.run(["getent", "group", "celery"], check=False).returncode == 0


def test_purging_the_client_leaves_nothing_of_ours(machine):
    machine.run(["apt-get", "purge", "-y", "celery-submit", "python3-celeryd-pkg"], timeout=600)
    assert not exists(machine, "/etc/celeryd")
    assert machine.run(["getent", "group", "celery"], check=False).returncode == 2
    assert versions(machine) == {}
    known = machine.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n"]).stdout
    assert not [line for line in known.splitlines()
                if line.split()[0] in PACKAGES and line.split()[1] != "not-installed"]


def test_the_previous_release_installs_with_rabbitmq_and_adds_4_4(machine):
    machine.run(["apt-get", "install", "--no-download", "-y", "rabbitmq-server"], timeout=600)
    assert_active(machine, "rabbitmq-server")
    machine.run(f"cd {PREVIOUS_DIR} && apt-get install -y ./*.deb", timeout=600)
    assert versions(machine) == dict.fromkeys(PACKAGES, PREVIOUS[0])
    wait_until(lambda: show(machine, "ActiveState") == "active", 120, "celery-worker to start")
    assert submit(machine, "add", "4", "4").stdout == "8\n"


def test_the_operator_edits_config_adds_an_instance_and_joins_the_local_broker(machine):
    machine.run(["sed", "-i", r"s/^#\?  concurrency: 2$/  concurrency: 3/", CONFIG])
    machine.run(f"printf 'worker:\\n  queues: [reports]\\n  concurrency: 1\\n' >{OVERLAY}")
    machine.run(["systemctl", "enable", "--now", WORKERS[1]], timeout=180)
    # join the real way: its credentials (account worker-self) and its drop-ins.
    issued = machine.run(["celeryd-admin", "provision", "--for-host", "self",
                          "--broker-host", "127.0.0.1"], timeout=300)
    machine.run(["celeryd-admin", "join", "-"], input=issued.stdout)
    machine.run(["systemctl", "restart", *WORKERS], timeout=300)
    for unit in WORKERS:
        assert_active(machine, unit)
    status = show(machine, "StatusText")
    assert status.startswith("Consuming from celery on amqp://worker-self:***@127.0.0.1:")
    assert "concurrency 3" in status, status
    assert show(machine, "StatusText", WORKERS[1]).startswith("Consuming from reports on ")
    before[machine.suite] = {path: sha256(machine, path) for path in KEPT}
    before[machine.suite].update({unit: show(machine, "MainPID", unit) for unit in WORKERS})


def test_the_upgrade_keeps_what_the_operator_has_and_restarts_on_the_new_code(machine):
    recorded = before[machine.suite]
    # As unattended-upgrades does: a conffile edited here and changed upstream keeps the
    # edit without a prompt (dpkg has no terminal to ask on).
    upgrade = machine.run(f"cd {machine.deb_dir} && apt-get install -y -o Dpkg::Options::="
                          f"--force-confdef -o Dpkg::Options::=--force-confold ./*.deb",
                          timeout=600)
    print(upgrade.stdout + upgrade.stderr)  # shown if an assertion below fails
    assert versions(machine) == dict.fromkeys(PACKAGES, celeryd_pkg.__version__)
    for unit in WORKERS:
        assert_active(machine, unit)
        assert show(machine, "MainPID", unit) not in ("0", recorded[unit]), unit
        assert machine.run(["systemctl", "is-enabled", unit]).stdout == "enabled\n", unit
    assert "concurrency 3" in show(machine, "StatusText")
    assert submit(machine, "add", "4", "4").stdout == "8\n"
    outcome = json.loads(submit(machine, "add", "1", "2", "--queue", "reports", "--json").stdout)
    assert outcome["result"] == 3
    # Celery logs the success after it sent the result, and journald writes a moment later.
    wait_until(lambda: f"[{outcome['id']}] succeeded" in machine.journal(unit=WORKERS[1]), 20,
               "the reports worker's success line")
    check = machine.run(["/usr/sbin/celeryd-admin", "check"], check=False, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert {path: sha256(machine, path) for path in KEPT} == {p: recorded[p] for p in KEPT}
    assert stat(machine, CREDENTIALS) == "root:celery 640"
