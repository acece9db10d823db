"""Unit tests: the drop-ins celeryd-generator writes from the config, and its failure modes."""

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from celeryd_pkg import config, dropins
from tests.unit import test_imports
from tests.unit.test_packaging import RENDER, ROOT, SOURCE, UNITS, service

GENERATOR = ROOT / "systemd" / "celeryd-generator"
HEADER = "# Written by celeryd-generator"
DEFAULTS_KEPT = ("nothing written for celery-worker.service, celery-worker@.service and their "
                 "instances: they keep their defaults (localhost and the broker only, no memory "
                 "limit)")


@pytest.fixture
def root(tmp_path):
    """A CELERYD_ROOT with an empty /etc/celeryd/conf.d: (root, conf.d)."""
    conf_d = tmp_path / "root" / "etc" / "celeryd" / "conf.d"
    conf_d.mkdir(parents=True)
    return tmp_path / "root", conf_d


def write(conf_d, name, worker_yaml):
    path = conf_d / name
    path.write_text("worker:\n" + "".join(f"  {line}\n" for line in worker_yaml.splitlines()))
    return path


def generate(root, tmp_path):
    """Run the generator in-process; return (exit code, {relative path: text}, stderr)."""
    out, err = tmp_path / "normal", io.StringIO()
    out.mkdir(exist_ok=True)
    code = dropins.main([str(out), str(tmp_path / "early"), str(tmp_path / "late")],
                        env={"CELERYD_ROOT": str(root)}, err=err)
    files = {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*")) if p.is_file()}
    return code, files, err.getvalue()


def service_lines(text):
    """The drop-in's lines after [Service], comments kept."""
    return text.split("[Service]\n", 1)[1].splitlines()


@pytest.mark.parametrize("worker_yaml, lines", [
    ("outbound: [10.0.0.0/8]", ["IPAddressAllow=10.0.0.0/8"]),
    ("outbound: [192.0.2.7, 10.0.0.0/8, 192.0.2.7]",
     ["IPAddressAllow=10.0.0.0/8", "IPAddressAllow=192.0.2.7"]),
    ("outbound: [10.0.0.0/8, any]", ["IPAddressAllow=any"]),
    ("outbound: [any]\nmemory_max: 300M", ["IPAddressAllow=any", "MemoryMax=300M"]),
    ("memory_high: 80%", ["MemoryHigh=80%"]),
    ("memory_max: 2G", ["MemoryMax=2G"]),
    ("outbound: ['2001:db8::/32', link-local]\nmemory_high: 1G\nmemory_max: infinity",
     ["IPAddressAllow=2001:db8::/32", "IPAddressAllow=link-local", "MemoryHigh=1G",
      "MemoryMax=infinity"]),
], ids=["one-network", "sorted-once", "any-wins", "any-and-max", "high", "max", "all"])
def test_each_combination_of_keys_gives_both_units_the_same_service_lines(
        root, tmp_path, worker_yaml, lines):
    source = write(root[1], "10-site.yaml", worker_yaml)

    code, files, err = generate(root[0], tmp_path)

    assert (code, err) == (0, "")
    assert sorted(files) == [f"{unit}.d/celeryd-config.conf" for unit in UNITS]
    for text in files.values():
        assert text.startswith(f"{HEADER} at boot and at every \"systemctl daemon-reload\" "
                               f"from\n# {source}.\n")
        assert service_lines(text) == lines


@pytest.mark.parametrize("worker_yaml", ["", "outbound: []\nmax_memory_per_child: 200000",
                                         "concurrency: 4"])
def test_nothing_is_written_when_no_unit_key_is_set(root, tmp_path, worker_yaml):
    write(root[1], "10-site.yaml", worker_yaml)

    assert generate(root[0], tmp_path) == (0, {}, "")


def test_nothing_is_written_without_any_config(tmp_path):
    assert generate(tmp_path / "no-such-root", tmp_path) == (0, {}, "")


def test_an_instance_overlay_that_changes_a_unit_key_gets_its_own_complete_dropin(
        root, tmp_path):
    base = write(root[1], "10-site.yaml", "outbound: [10.0.0.0/8]\nmemory_max: 300M")
    overlay = write(root[1], "@reports.yaml", "memory_high: 200M\nmemory_max: 1G")
    write(root[1], "@same.yaml", "concurrency: 8\nqueues: [same]")  # no unit key: no file

    code, files, err = generate(root[0], tmp_path)

    assert (code, err) == (0, "")
    assert sorted(files) == ["celery-worker.service.d/celeryd-config.conf",
                             "celery-worker@.service.d/celeryd-config.conf",
                             "celery-worker@reports.service.d/celeryd-config.conf"]
    own = files["celery-worker@reports.service.d/celeryd-config.conf"]
    # The same file name replaces the template's drop-in for this instance: all of its keys.
    assert service_lines(own) == ["IPAddressAllow=10.0.0.0/8", "MemoryHigh=200M",
                                  "MemoryMax=1G"]
    assert f"# {base}, {overlay}.\n" in own
    assert service_lines(files["celery-worker@.service.d/celeryd-config.conf"]) == [
        "IPAddressAllow=10.0.0.0/8", "MemoryMax=300M"]


def test_an_overlay_that_takes_the_settings_away_masks_the_templates_dropin(root, tmp_path):
    write(root[1], "10-site.yaml", "outbound: [any]")
    write(root[1], "@local.yaml", "outbound: []")

    files = generate(root[0], tmp_path)[1]

    assert service_lines(files["celery-worker@local.service.d/celeryd-config.conf"]) == [
        "# (nothing beyond the unit's defaults)"]


def test_an_overlay_alone_gives_only_its_instance_a_dropin(root, tmp_path):
    write(root[1], "@web.yaml", "outbound: [203.0.113.0/24]")

    files = generate(root[0], tmp_path)[1]

    assert list(files) == ["celery-worker@web.service.d/celeryd-config.conf"]
    assert service_lines(files["celery-worker@web.service.d/celeryd-config.conf"]) == [
        "IPAddressAllow=203.0.113.0/24"]


def test_an_overlay_name_no_unit_can_have_is_ignored(root, tmp_path):
    write(root[1], "@two words.yaml", "outbound: [any]")
    write(root[1], "@.yaml", "outbound: [any]")

    assert generate(root[0], tmp_path) == (0, {}, "")


@pytest.mark.parametrize("name, text, problem", [
    ("10-site.yaml", "worker:\n  outbound: [example.com]\n",
     "10-site.yaml: line 2: worker.outbound: 'example.com' is not an address, a network "
     "(10.0.0.0/8) or one of any, localhost, link-local, multicast (systemd filters by "
     "address, not by host name)"),
    ("10-site.yaml", "worker:\n  memory_max: lots\n",
     "10-site.yaml: line 2: worker.memory_max: 'lots' is not a size like 512M, 2G, 80% or "
     "infinity"),
    ("10-site.yaml", "worker: [outbound\n", "10-site.yaml: line 2: YAML syntax error: "),
    ("10-site.yaml", "worker:\n  outbund: [any]\n",
     "10-site.yaml: line 2: unknown key 'worker.outbund'"),
    ("10-site.yaml", "worker:\n  outbound: any\n  memory_max: lots\n",
     "10-site.yaml: line 2: worker.outbound: expected a list of strings, got a string 'any' "
     "(and 1 more)"),
], ids=["host-name", "bad-size", "bad-yaml", "unknown-key", "two-problems"])
def test_a_bad_config_writes_nothing_prints_one_line_naming_file_and_key_and_exits_0(
        root, tmp_path, name, text, problem):
    write(root[1], "05-good.yaml", "outbound: [any]")
    write(root[1], "@web.yaml", "memory_max: 1G")
    (root[1] / name).write_text(text)

    code, files, err = generate(root[0], tmp_path)

    assert (code, files) == (0, {})
    assert err.count("\n") == 1
    assert err.startswith(f"celeryd-generator: {root[1] / problem}")
    assert err.endswith(f"; {DEFAULTS_KEPT}\n")


def test_a_bad_instance_overlay_costs_only_that_instance_its_dropin(root, tmp_path):
    write(root[1], "10-site.yaml", "outbound: [10.0.0.0/8]")
    bad = write(root[1], "@web.yaml", "memory_max: [1G]")
    write(root[1], "@ok.yaml", "memory_max: 1G")

    code, files, err = generate(root[0], tmp_path)

    assert code == 0
    assert "celery-worker@web.service.d/celeryd-config.conf" not in files
    assert "celery-worker@ok.service.d/celeryd-config.conf" in files
    assert err == (f"celeryd-generator: {bad}: line 2: worker.memory_max: expected a string, got "
                   f"a list ['1G']; nothing written for celery-worker@web.service, which refuses "
                   f"to start on this config\n")


def test_the_generator_reads_neither_the_credentials_nor_the_environment(root, tmp_path):
    write(root[1], "10-site.yaml", "memory_max: 300M")
    # Keys the credentials file may not set: the loader would refuse it, were it read.
    (root[0] / "etc" / "celeryd" / "credentials").write_text("worker:\n  outbound: [any]\n")
    out, err = tmp_path / "normal", io.StringIO()

    dropins.main([str(out)], env={"CELERYD_ROOT": str(root[0]), "CELERYD_WORKER_OUTBOUND": "any",
                                  "CELERYD_WORKER_MEMORY_MAX": "nonsense"}, err=err)

    assert err.getvalue() == ""
    assert service_lines((out / "celery-worker.service.d" / "celeryd-config.conf").read_text()) \
        == ["MemoryMax=300M"]


def test_a_directory_it_cannot_write_costs_one_line_and_still_exit_0(root, tmp_path):
    write(root[1], "10-site.yaml", "outbound: [any]")
    blocked = tmp_path / "normal"
    blocked.write_text("a file where the directory should be\n")
    err = io.StringIO()

    assert dropins.main([str(blocked)], env={"CELERYD_ROOT": str(root[0])}, err=err) == 0
    lines = err.getvalue().splitlines()
    assert [line.split("; nothing written for ")[1] for line in lines] == list(UNITS)
    assert all(line.startswith(f"celeryd-generator: cannot write {blocked}/")
               for line in lines)


def test_without_err_a_problem_goes_to_the_kernel_log_with_its_level_and_name(root, tmp_path):
    bad = write(root[1], "10-site.yaml", "memory_high: lots")
    kmsg = root[0] / "dev" / "kmsg"  # /dev/kmsg, moved with CELERYD_ROOT
    kmsg.parent.mkdir()
    kmsg.write_text("")

    assert dropins.main([str(tmp_path / "normal")], env={"CELERYD_ROOT": str(root[0])}) == 0
    assert kmsg.read_text() == (
        f"<27>celeryd-generator[{os.getpid()}]: {bad}: line 2: worker.memory_high: 'lots' is not "
        f"a size like 512M, 2G, 80% or infinity; {DEFAULTS_KEPT}\n")


def test_without_a_kernel_log_a_problem_goes_to_the_journals_syslog_socket(tmp_path):
    # A container has no /dev/kmsg: at daemon-reload journald listens there.
    short = Path(tempfile.mkdtemp(prefix="gen", dir="/tmp"))  # a socket path has 108 bytes
    try:
        conf_d = short / "etc" / "celeryd" / "conf.d"
        conf_d.mkdir(parents=True)
        write(conf_d, "10-site.yaml", "memory_high: lots")
        (short / "run" / "systemd" / "journal").mkdir(parents=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
            journal.bind(str(short / "run" / "systemd" / "journal" / "dev-log"))
            assert dropins.main([str(tmp_path / "normal")], env={"CELERYD_ROOT": str(short)}) == 0
            record = journal.recv(4096).decode()
    finally:
        shutil.rmtree(short)
    assert record.startswith(f"<27>celeryd-generator[{os.getpid()}]: {conf_d}/10-site.yaml: "
                             f"line 2: worker.memory_high: 'lots' is not a size")


def test_without_arguments_it_prints_its_usage_and_exits_0():
    err = io.StringIO()
    assert dropins.main([], env={}, err=err) == 0
    assert err.getvalue() == ("celeryd-generator: usage: celeryd-generator NORMAL_DIR "
                              "[EARLY_DIR LATE_DIR]\n")


def run_generator(tmp_path, env, pythonpath=ROOT):
    dirs = [tmp_path / name for name in ("normal", "early", "late")]
    result = subprocess.run([GENERATOR, *dirs], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(pythonpath), **env}, cwd="/")
    return result, dirs


def test_the_generator_script_writes_into_the_first_directory_only(root, tmp_path):
    write(root[1], "10-site.yaml", "outbound: [10.0.0.0/8]\nmemory_max: 300M")

    result, (normal, early, late) = run_generator(tmp_path, {"CELERYD_ROOT": str(root[0])})

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    for unit in UNITS:
        text = (normal / f"{unit}.d" / "celeryd-config.conf").read_text()
        assert service_lines(text) == ["IPAddressAllow=10.0.0.0/8", "MemoryMax=300M"]
    assert not early.exists() and not late.exists()


def test_the_generator_script_with_a_bad_config_exits_0_with_one_line(root, tmp_path):
    # No kernel log nor journal under this CELERYD_ROOT: the line goes to stderr.
    write(root[1], "10-site.yaml", "outbound: [example.com]")

    result, (normal, _, _) = run_generator(tmp_path, {"CELERYD_ROOT": str(root[0])})

    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr.startswith(f"celeryd-generator: {root[1]}/10-site.yaml: line 2: "
                                    f"worker.outbound: 'example.com' is not an address")
    assert result.stderr.count("\n") == 1
    assert list(normal.rglob("*.conf")) == []


def test_the_generator_script_without_a_working_celeryd_pkg_exits_0_with_one_line(tmp_path):
    # As mid-upgrade, when the module is being replaced: the boot must go on.
    broken = tmp_path / "site" / "celeryd_pkg"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('half-unpacked')\n")

    result, _ = run_generator(tmp_path, {}, pythonpath=tmp_path / "site")

    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == ("celeryd-generator: cannot import celeryd_pkg (half-unpacked); "
                             "nothing written\n")


def test_the_generator_imports_only_the_config_layer_and_no_celery():
    # It runs at every boot and daemon-reload: celery and kombu would cost a second.
    allowed = set(test_imports.CONFIG_MODULES) | {"dropins"}
    assert test_imports.violations(test_imports.ROOT, "celeryd_pkg", ["dropins"],
                                   lambda name: name not in allowed | {"celeryd_pkg"}) == []
    code = ("import sys, tempfile; from celeryd_pkg import dropins; "
            "dropins.main([tempfile.mkdtemp()], env={}); "
            "print(' '.join(sorted(m for m in ('celery', 'kombu', 'amqp') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT)}, cwd="/", timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "\n", "")


def loaded(tmp_path, worker_yaml):
    path = tmp_path / f"{abs(hash(worker_yaml))}.yaml"
    path.write_text("worker:\n" + "".join(f"  {line}\n" for line in worker_yaml.splitlines()))
    return config.load(path, env={}, with_credentials=False)


def test_changed_unit_keys_names_only_the_unit_keys_that_differ(tmp_path):
    old = loaded(tmp_path, "outbound: [10.0.0.0/8, 192.0.2.7]\nconcurrency: 2")
    same = loaded(tmp_path, "outbound: [192.0.2.7, 10.0.0.0/8]\nconcurrency: 5")
    new = loaded(tmp_path, "outbound: [any]\nmemory_max: 1G\nmax_memory_per_child: 1000")

    assert dropins.changed_unit_keys(old, same) == []
    assert dropins.changed_unit_keys(old, new) == ["worker.outbound", "worker.memory_max"]
    assert dropins.reload_warning(old, same) is None
    assert dropins.reload_warning(old, new) == (
        "worker.outbound, worker.memory_max changed: takes effect after systemctl daemon-reload "
        "&& systemctl restart celery-worker")
    assert dropins.reload_warning(old, new, "reports").endswith(
        "systemctl restart celery-worker@reports")


def test_both_units_survive_an_oom_kill_of_a_child(tmp_path):
    subprocess.run([RENDER, SOURCE, tmp_path], check=True)
    for unit in UNITS:
        assert service(tmp_path / unit)["OOMPolicy"] == ["continue"], unit


def test_the_package_installs_the_generator_where_bookworm_and_trixie_systemd_look():
    # bookworm's systemd runs /lib/systemd/system-generators; on trixie (merged /usr, as
    # bookworm installs are by default) that is /usr/lib/systemd/system-generators.
    install = (ROOT / "debian" / "celeryd.install").read_text().splitlines()
    assert "systemd/celeryd-generator lib/systemd/system-generators/" in install
    assert GENERATOR.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(GENERATOR)], check=True)
    assert Path(GENERATOR).stat().st_mode & 0o111 == 0o111
