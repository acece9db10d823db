"""The worker units' outbound network and memory settings, from the config through the generator.

    Given a booted <suite> machine with the three debs installed (no broker needed)
    Then  both worker units allow localhost only, no memory limit, OOMPolicy=continue
    When  conf.d sets worker.outbound: [10.0.0.0/8] and worker.memory_max: 300M
    And   the admin runs `systemctl daemon-reload`
    Then  celery-worker.service and celery-worker@x.service show them
    And   an instance overlay changes its own instance only
    And   a bad value leaves the defaults and celeryd-generator's one line in the log
    And   `celeryd-admin check` says what tasks may reach

    | suite    |
    | trixie   |
    | bookworm |

Containers here run on the legacy cgroup hierarchy, where systemd shows these settings but does
not enforce them: this proves the wiring; the VM test proves the enforcement.
"""

import os
import re

import pytest

from tests.system import harness
from tests.system.conftest import REPO, _print_on_failure
from tests.system.harness import wait_until

CONF_D = "/etc/celeryd/conf.d"
GENERATOR_DIR = "/run/systemd/generator"
LOCALHOST = {"127.0.0.0/8", "::1/128"}
MIB_300 = str(300 * 1024 * 1024)
GIB_1 = str(1024 * 1024 * 1024)


@pytest.fixture(scope="module", params=harness.SUITES, ids=harness.SUITES)
def machine(request, prerequisites, debs):
    """A booted machine of the suite with the three debs installed and no broker."""
    with harness.Container(request.param) as container:
        container.prepare(debs)
        container.boot()
        container.run(f"cd {container.deb_dir} && apt-get install -y --no-install-recommends "
                      f"./*.deb", timeout=600)
        yield container


@pytest.fixture(autouse=True)
def journal_on_failure(request, machine):
    yield
    _print_on_failure(request, machine)


def unit_settings(machine, unit):
    """Return (set of IPAddressAllow entries, MemoryMax, MemoryHigh, OOMPolicy) of unit."""
    shown = machine.run(["systemctl", "show", "-p", "IPAddressAllow", "-p", "MemoryMax", "-p",
                         "MemoryHigh", "-p", "OOMPolicy", unit]).stdout
    values = dict(line.split("=", 1) for line in shown.splitlines())
    return (set(values["IPAddressAllow"].split()), values["MemoryMax"], values["MemoryHigh"],
            values["OOMPolicy"])


def write(machine, name, text):
    machine.run(["sh", "-c", f"cat > {CONF_D}/{name}"], input=text)


def reload(machine):
    machine.run(["systemctl", "daemon-reload"], timeout=120)


def generator_log(machine):
    """This boot's lines from celeryd-generator, identifier stripped."""
    return machine.run(["journalctl", "-b", "-q", "-t", "celeryd-generator", "-o", "cat"],
                       check=False).stdout


def exposure(machine, unit):
    out = machine.run(["systemd-analyze", "security", "--no-pager", unit], check=False).stdout
    return float(re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)",
                           out).group(1))


def recorded_target(unit):
    with open(os.path.join(REPO, "tests", "system", "expected-security.txt")) as f:
        targets = dict(line.split() for line in f if line.strip() and not line.startswith("#"))
    return float(targets[unit])


def test_after_install_both_units_allow_localhost_only_and_survive_an_oom_kill(machine):
    generator = machine.run(["ls", "-l", "/lib/systemd/system-generators/celeryd-generator"])
    assert generator.stdout.startswith("-rwxr-xr-x")
    for unit in ("celery-worker.service", "celery-worker@x.service"):
        assert unit_settings(machine, unit) == (LOCALHOST, "infinity", "infinity", "continue")
    # Nothing set, nothing written.
    assert machine.run(f"ls {GENERATOR_DIR} | grep celery", check=False).stdout == ""
    # OOMPolicy=continue leaves the hardening score where it was.
    for unit, measured in (("celery-worker.service", "celery-worker.service"),
                           ("celery-worker@.service", "celery-worker@x.service")):
        assert exposure(machine, measured) <= recorded_target(unit) <= 0.9, unit


def test_conf_d_settings_reach_both_units_at_daemon_reload(machine):
    write(machine, "50-net.yaml", "worker:\n  outbound: [10.0.0.0/8]\n  memory_max: 300M\n")
    reload(machine)
    for unit in ("celery-worker.service", "celery-worker@x.service"):
        assert unit_settings(machine, unit) == (LOCALHOST | {"10.0.0.0/8"}, MIB_300, "infinity",
                                                "continue"), unit
    dropin = machine.run(["cat", f"{GENERATOR_DIR}/celery-worker.service.d/celeryd-config.conf"])
    assert dropin.stdout.endswith("[Service]\nIPAddressAllow=10.0.0.0/8\nMemoryMax=300M\n")
    # systemd-analyze counts any allowed address beyond localhost (a remote broker's too) as
    # one check of 0.1: the documented price of the switch, and nothing else changes.
    assert exposure(machine, "celery-worker.service") <= recorded_target(
        "celery-worker.service") + 0.1


def test_an_instance_overlay_changes_only_its_own_instance(machine):
    write(machine, "@x.yaml", "worker:\n  outbound: [192.0.2.0/24]\n  memory_high: 1G\n")
    reload(machine)
    # Its drop-in replaces the template's (same name): the overlay's list, not both lists.
    assert unit_settings(machine, "celery-worker@x.service") == (
        LOCALHOST | {"192.0.2.0/24"}, MIB_300, GIB_1, "continue")
    for unit in ("celery-worker.service", "celery-worker@y.service"):
        assert unit_settings(machine, unit) == (LOCALHOST | {"10.0.0.0/8"}, MIB_300, "infinity",
                                                "continue"), unit
    # An overlay that takes the network away leaves that instance at localhost.
    write(machine, "@x.yaml", "worker:\n  outbound: []\n")
    reload(machine)
    assert unit_settings(machine, "celery-worker@x.service")[0] == LOCALHOST
    assert unit_settings(machine, "celery-worker@y.service")[0] == LOCALHOST | {"10.0.0.0/8"}
    machine.run(["rm", f"{CONF_D}/@x.yaml"])


def test_a_bad_value_leaves_the_defaults_and_one_line_from_the_generator(machine):
    write(machine, "60-bad.yaml", "worker:\n  outbound: [example.com]\n")
    try:
        reload(machine)
        for unit in ("celery-worker.service", "celery-worker@x.service"):
            assert unit_settings(machine, unit) == (LOCALHOST, "infinity", "infinity",
                                                    "continue"), unit
        line = (f"{CONF_D}/60-bad.yaml: line 2: worker.outbound: 'example.com' is not an "
                f"address")
        # No /dev/kmsg in an nspawn container: the line goes to journald's syslog socket.
        logged = wait_until(lambda: generator_log(machine).count(line), 30, "the generator's line")
        assert logged == 1
    finally:
        machine.run(["rm", f"{CONF_D}/60-bad.yaml"])
        reload(machine)
    assert unit_settings(machine, "celery-worker.service")[0] == LOCALHOST | {"10.0.0.0/8"}


def test_check_says_what_tasks_may_reach(machine):
    check = machine.run(["celeryd-admin", "check"], check=False, timeout=120)
    lines = check.stdout.splitlines()
    assert lines[0].startswith("OK   config: ")
    assert lines[1] == ("OK   outbound: tasks may reach: localhost, the broker (localhost), "
                        "and: 10.0.0.0/8")
    assert lines[2] == ("OK   memory: the largest child killed above 300M (worker.memory_max)")
    # No broker on this machine: the TCP step fails, exit 4.
    assert check.returncode == 4, check.stdout
