"""Static checks of debian/ and systemd/ against design.md and facts.md: no build, no boot."""

import configparser
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = [ROOT / "systemd" / "celery-worker.service", ROOT / "systemd" / "celery-worker@.service"]

# facts.md, "Hardening a prefork Celery worker": the set that scored 0.9 and still ran tasks.
HARDENING = {
    "AmbientCapabilities": [""],
    "CapabilityBoundingSet": [""],
    "DevicePolicy": ["closed"],
    "IPAddressAllow": ["localhost"],
    "IPAddressDeny": ["any"],
    "KeyringMode": ["private"],
    "LockPersonality": ["yes"],
    "MemoryDenyWriteExecute": ["yes"],
    "NoNewPrivileges": ["yes"],
    "PrivateDevices": ["yes"],
    "PrivateTmp": ["yes"],
    "PrivateUsers": ["yes"],
    "ProcSubset": ["pid"],
    "ProtectClock": ["yes"],
    "ProtectControlGroups": ["yes"],
    "ProtectHome": ["yes"],
    "ProtectHostname": ["yes"],
    "ProtectKernelLogs": ["yes"],
    "ProtectKernelModules": ["yes"],
    "ProtectKernelTunables": ["yes"],
    "ProtectProc": ["invisible"],
    "ProtectSystem": ["strict"],
    "RemoveIPC": ["yes"],
    "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
    "RestrictNamespaces": ["yes"],
    "RestrictRealtime": ["yes"],
    "RestrictSUIDSGID": ["yes"],
    "SystemCallArchitectures": ["native"],
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "UMask": ["0077"],
}

# design.md, "Packages": binary package -> what its Depends must name (besides substvars).
DESIGN_DEPENDS = {
    "python3-celeryd-pkg": {"python3-celery", "python3-kombu", "python3-sdnotify", "python3-yaml"},
    "celeryd": {"python3-celeryd-pkg"},
    "celery-submit": {"python3-celeryd-pkg"},
}


def parse_unit(path):
    """Given a unit file, return {section: [(key, value), ...]} in file order, duplicates kept."""
    sections, current = {}, None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key, value))
    return sections


def service(path):
    """Return {key: [values]} of a unit file's [Service] section."""
    values = {}
    for key, value in parse_unit(path)["Service"]:
        values.setdefault(key, []).append(value)
    return values


def parse_control():
    """Return debian/control as a list of paragraphs, {field: value}, continuation lines joined."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", (ROOT / "debian" / "control").read_text().strip()):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1].isspace():
                fields[key] += " " + line.strip()
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        paragraphs.append(fields)
    return paragraphs


def relation_names(value):
    """Return the package names in a relationship field, without versions or substvars."""
    names = set()
    for item in value.split(","):
        for alternative in item.split("|"):
            name = alternative.strip().split(" ")[0].split("(")[0]
            if name and not name.startswith("${"):
                names.add(name)
    return names


def binary_packages():
    return {p["Package"]: p for p in parse_control() if "Package" in p}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_is_type_notify_from_the_main_process_and_kills_mixed(unit):
    values = service(unit)

    assert values["Type"] == ["notify"]
    assert values["NotifyAccess"] == ["main"]
    # facts.md: control-group sends SIGTERM to the prefork children and the task is lost.
    assert values["KillMode"] == ["mixed"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_has_every_hardening_key_measured_in_facts(unit):
    values = service(unit)

    for key, expected in HARDENING.items():
        assert values.get(key) == expected, key


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_runs_the_worker_module_as_user_celery_with_its_state_directory(unit):
    values = service(unit)

    assert values["ExecStart"][0].startswith("/usr/bin/python3 -m celeryd_pkg.worker")
    assert values["User"] == ["celery"]
    assert values["Group"] == ["celery"]
    assert values["StateDirectory"] == ["celeryd"]
    assert values["StateDirectoryMode"] == ["0750"]


def test_template_unit_passes_its_instance_name_to_the_worker():
    assert service(UNITS[1])["ExecStart"] == [
        "/usr/bin/python3 -m celeryd_pkg.worker --instance %i"
    ]
    assert service(UNITS[0])["ExecStart"] == ["/usr/bin/python3 -m celeryd_pkg.worker"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_reloads_with_sighup_restarts_on_failure_and_has_a_watchdog(unit):
    values = service(unit)

    assert values["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert values["Restart"] == ["on-failure"]
    assert values["RestartSec"] == ["5"]
    assert values["WatchdogSec"] == ["60"]
    assert values["TimeoutStopSec"] == ["10min"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_lists_service_keys_one_per_line_in_alphabetical_order(unit):
    keys = [key for key, _ in parse_unit(unit)["Service"]]

    assert keys == sorted(keys)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_logs_to_the_journal_and_keeps_secrets_out_of_the_environment(unit):
    values = service(unit)

    for key in ("StandardOutput", "StandardError", "LogsDirectory", "EnvironmentFile"):
        assert key not in values, key
    for value in values.get("Environment", []):
        assert not re.search(r"PASSWORD|SECRET|amqp://", value, re.IGNORECASE), value


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_is_wanted_by_multi_user_and_ordered_after_a_local_broker(unit):
    sections = parse_unit(unit)

    assert ("WantedBy", "multi-user.target") in sections["Install"]
    after = " ".join(v for k, v in sections["Unit"] if k == "After").split()
    assert "rabbitmq-server.service" in after


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_starts_with_an_operator_header(unit):
    head = unit.read_text().split("[Unit]")[0]

    for word in ("What:", "When:", "Disable:", "Logs:"):
        assert word in head


@pytest.mark.parametrize("package", sorted(DESIGN_DEPENDS))
def test_control_depends_match_the_design_table(package):
    fields = binary_packages()[package]

    assert relation_names(fields["Depends"]) == DESIGN_DEPENDS[package]
    assert "${misc:Depends}" in fields["Depends"]
    assert "${python3:Depends}" in fields["Depends"]


def test_control_pins_the_python_package_to_the_same_build():
    packages = binary_packages()

    for name in ("celeryd", "celery-submit"):
        assert "python3-celeryd-pkg (= ${binary:Version})" in packages[name]["Depends"]


def test_celeryd_recommends_rabbitmq_server():
    assert relation_names(binary_packages()["celeryd"]["Recommends"]) == {"rabbitmq-server"}


def test_system_user_comes_from_sysusers_with_home_in_var_lib_and_no_shell():
    # dh_installsysusers adds "systemd | systemd-standalone-sysusers | systemd-sysusers"
    # to ${misc:Depends}; at compat 13 it runs only with this build dependency.
    source = parse_control()[0]
    assert "debhelper-compat (= 13)" in source["Build-Depends"]
    assert "dh-sequence-installsysusers" in relation_names(source["Build-Depends"])

    lines = (ROOT / "debian" / "celeryd.sysusers").read_text().splitlines()
    assert lines == ['u celery - "celeryd worker" /var/lib/celeryd /usr/sbin/nologin']


def test_a_client_only_host_gets_the_group_celery_for_its_credentials_file():
    assert (ROOT / "debian" / "celery-submit.sysusers").read_text() == "g celery -\n"


def test_admin_command_moved_to_the_shared_package_with_breaks_and_replaces():
    fields = binary_packages()["python3-celeryd-pkg"]
    assert fields["Breaks"].strip() == fields["Replaces"].strip() == "celeryd (<< 0.2.0~),"


def test_one_version_everywhere():
    import celeryd_pkg

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    changelog = (ROOT / "debian" / "changelog").read_text().split("\n", 1)[0]
    assert changelog.startswith(f"celeryd ({celeryd_pkg.__version__}) ")
    assert setup["metadata"]["version"] == celeryd_pkg.__version__
    for page in ("man/celery-submit.1", "man/celeryd-admin.8"):
        assert f'"celeryd {celeryd_pkg.__version__}"' in (ROOT / page).read_text()


def test_commands_go_to_their_packages_and_the_worker_entry_point_is_dropped():
    install = {name: (ROOT / "debian" / f"{name}.install").read_text().splitlines()
               for name in DESIGN_DEPENDS}

    assert "usr/bin/celery-submit" in install["celery-submit"]
    # Every host joins or checks: the admin command comes with the shared package.
    assert "usr/bin/celeryd-admin usr/sbin/" in install["python3-celeryd-pkg"]
    assert "conf/celeryd.yaml etc/celeryd/" in install["celeryd"]
    assert "usr/bin/celeryd-worker" in (ROOT / "debian" / "not-installed").read_text()
    assert (ROOT / "debian" / "celeryd.dirs").read_text().split() == ["etc/celeryd/conf.d"]


def test_rules_wrappers_name_the_same_entry_points_as_setup_cfg():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = dict(
        (name.strip(), target.strip().split(":")[0])
        for name, _, target in (
            line.partition("=")
            for line in setup["options.entry_points"]["console_scripts"].strip().splitlines()
        )
    )
    rules = (ROOT / "debian" / "rules").read_text()

    for name in ("celery-submit", "celeryd-admin"):
        assert f"{name}={scripts[name]}" in rules
        assert setup["options.entry_points"]["console_scripts"].count(f"{scripts[name]}:main")


def test_man_pages_are_installed_for_both_commands():
    assert (ROOT / "debian" / "celery-submit.manpages").read_text().split() == [
        "man/celery-submit.1"
    ]
    assert (ROOT / "debian" / "python3-celeryd-pkg.manpages").read_text().split() == [
        "man/celeryd-admin.8"]
    for page in ("man/celery-submit.1", "man/celeryd-admin.8"):
        assert (ROOT / page).read_text().startswith(".TH ")


@pytest.mark.parametrize("script", ["celeryd.postinst", "celeryd.postrm"])
def test_maintainer_script_is_valid_sh_with_set_e_and_a_debhelper_token(script):
    path = ROOT / "debian" / script
    text = path.read_text()

    subprocess.run(["sh", "-n", str(path)], check=True)
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -e\n" in text
    assert text.count("#DEBHELPER#") == 1


def test_postinst_creates_the_user_before_a_provisioning_that_cannot_fail_the_install():
    text = (ROOT / "debian" / "celeryd.postinst").read_text()
    body = text.split("#DEBHELPER#")[0]

    assert "if ! celeryd-admin provision --defer-if-absent; then" in body
    case = body[body.index('case "$1" in'):]
    assert case.index("create_system_user") < case.index("provision_broker")


def test_postrm_purges_config_state_broker_user_and_system_user_and_remove_keeps_them():
    text = (ROOT / "debian" / "celeryd.postrm").read_text()
    case = text[text.index('case "$1" in'):text.index("#DEBHELPER#")]

    assert re.search(r"purge\)\s+remove_broker_user\s+remove_config\s+remove_dropins\s+"
                     r"remove_state\s+remove_system_user\s+;;", case)
    assert 'rm -f "/etc/systemd/system/$unit.d/50-celeryd-broker.conf"' in text
    assert "remove)" not in case
    assert "rm -rf /etc/celeryd" in text
    assert "rm -rf /var/lib/celeryd" in text
    assert "rabbitmqctl -q delete_user celery >/dev/null 2>&1 || true" in text
    assert "userdel celery" in text and "groupdel celery" in text


def test_recorded_security_exposure_is_at_most_one():
    # Measured by hand in a booted trixie container (tests/system reuses the number).
    recorded = (ROOT / "tests" / "system" / "expected-security.txt").read_text().split()

    assert recorded[0] == "celery-worker.service"
    assert float(recorded[1]) <= 1.0


def test_provisioning_unit_runs_once_after_a_local_broker_starts_without_credentials():
    path = ROOT / "systemd" / "celeryd-provision.service"
    unit = dict(parse_unit(path)["Unit"])
    values = service(path)
    assert unit["After"] == "rabbitmq-server.service"
    assert unit["ConditionPathExists"] == "!/etc/celeryd/credentials"
    assert values["Type"] == ["oneshot"]
    assert values["ExecStart"] == ["/usr/sbin/celeryd-admin provision"]
    assert "is-enabled celery-worker.service" in values["ExecStartPost"][0]
    assert "Install" not in parse_unit(path)  # static: the broker's unit wants it
    dropin = ROOT / "systemd" / "rabbitmq-server.service.d" / "celeryd.conf"
    assert parse_unit(dropin) == {"Unit": [("Wants", "celeryd-provision.service")]}
    install = (ROOT / "debian" / "celeryd.install").read_text().splitlines()
    assert "systemd/celeryd-provision.service lib/systemd/system/" in install
    assert ("systemd/rabbitmq-server.service.d/celeryd.conf "
            "lib/systemd/system/rabbitmq-server.service.d/") in install
