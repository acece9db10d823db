"""tasks.virtualenv: which venvs the worker accepts, the one-line refusals, and where the venv's
site-packages lands on sys.path (after Debian's)."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from celeryd_pkg import virtualenv, worker
from celeryd_pkg.errors import ConfigError

RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
PATCH = f"{RUNNING}.{sys.version_info.micro}"
HOME = os.path.dirname(os.path.realpath(sys.executable))  # /usr/bin for Debian's python3


def fake_venv(root, cfg=None):
    """Make a directory shaped like a venv of the running Python; cfg replaces pyvenv.cfg."""
    site_dir = root / "lib" / f"python{RUNNING}" / "site-packages"
    site_dir.mkdir(parents=True)
    if cfg is None:
        cfg = (f"home = {HOME}\ninclude-system-site-packages = true\nversion = {PATCH}\n"
               f"executable = /usr/bin/python{RUNNING}\n")
    (root / "pyvenv.cfg").write_text(cfg)
    return site_dir


def refusal(path):
    with pytest.raises(ConfigError) as info:
        virtualenv.check(str(path))
    message = info.value.message
    assert info.value.exit_code == 3
    assert message.startswith(f"celeryd: tasks.virtualenv: {path}: ")
    assert "\n" not in message
    return message


def config_of(path):
    return SimpleNamespace(tasks=SimpleNamespace(virtualenv=path and str(path)))


def test_a_venv_of_this_python_gives_its_site_packages(tmp_path):
    site_dir = fake_venv(tmp_path)
    assert virtualenv.check(str(tmp_path)) == str(site_dir)


def test_pypa_virtualenv_version_info_is_read_too(tmp_path):
    fake_venv(tmp_path, f"include-system-site-packages = true\nversion_info = {PATCH}.final.0\n")
    assert virtualenv.check(str(tmp_path)).endswith(f"python{RUNNING}/site-packages")


def test_missing_directory_says_how_to_make_it(tmp_path):
    message = refusal(tmp_path / "nope")
    assert "no such directory" in message
    assert f"python3 -m venv --system-site-packages {tmp_path / 'nope'}" in message


@pytest.mark.parametrize("path", ["/home/nobody-celeryd-test/venv", "/root/celeryd-test-venv"])
def test_missing_under_home_or_root_names_protecthome(path):
    message = refusal(path)
    assert "not visible to the worker: its unit has ProtectHome=yes" in message
    assert "/opt, /srv or /usr/local" in message


@pytest.mark.parametrize("path, reason", [
    ("/home/alice/venv", "not visible to the worker: its unit has ProtectHome=yes"),
    ("/srv/locked/venv", "not reachable by user celery (a parent directory is not searchable)"),
])
def test_a_path_behind_a_closed_directory(monkeypatch, path, reason):
    # What the worker meets under ProtectHome=yes (/root is mode 000 there), or under a
    # directory that user celery may not search.
    def denied(name, *args, **kwargs):
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(virtualenv.os, "stat", denied)
    monkeypatch.setattr(virtualenv, "_user", lambda: "celery")
    assert reason in refusal(path)


def test_a_file_is_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("")
    assert refusal(tmp_path / "file").endswith("not a directory")


def test_a_directory_without_pyvenv_cfg_is_not_a_venv(tmp_path):
    assert "not a virtual environment (no pyvenv.cfg)" in refusal(tmp_path)


def test_another_python_minor_version_is_refused_with_the_fix(tmp_path):
    fake_venv(tmp_path, "include-system-site-packages = true\nversion = 3.9.2\n")
    message = refusal(tmp_path)
    assert f"made by Python 3.9, the worker runs Python {RUNNING}" in message
    assert f"--clear {tmp_path}" in message


def test_another_patch_level_is_fine(tmp_path):
    fake_venv(tmp_path, f"include-system-site-packages = true\nversion = {RUNNING}.99\n")
    assert virtualenv.check(str(tmp_path))


def test_a_venv_of_another_interpreter_is_refused(tmp_path):
    # e.g. a pyenv python3 first on PATH: its system site-packages are not Debian's.
    fake_venv(tmp_path, f"home = /opt/pyenv/versions/{PATCH}/bin\n"
                        f"include-system-site-packages = true\nversion = {PATCH}\n")
    message = refusal(tmp_path)
    assert f"made by the Python in /opt/pyenv/versions/{PATCH}/bin" in message
    assert f"the worker runs {sys.executable}" in message


def test_a_pyvenv_cfg_without_version_is_refused(tmp_path):
    fake_venv(tmp_path, "include-system-site-packages = true\n")
    assert "names no Python version" in refusal(tmp_path)


@pytest.mark.parametrize("line", ["include-system-site-packages = false\n", ""])
def test_a_venv_without_system_site_packages_is_refused(tmp_path, line):
    fake_venv(tmp_path, f"{line}version = {PATCH}\n")
    message = refusal(tmp_path)
    assert "made without --system-site-packages" in message
    assert "include-system-site-packages = true" in message


def test_missing_site_packages_is_an_incomplete_venv(tmp_path):
    site_dir = fake_venv(tmp_path)
    site_dir.rmdir()
    assert "the venv is incomplete" in refusal(tmp_path)


def test_unreadable_pyvenv_cfg_names_the_user_and_the_fix(tmp_path, monkeypatch):
    fake_venv(tmp_path)
    real_open = open

    def denied(file, *args, **kwargs):
        if str(file).endswith("pyvenv.cfg"):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    monkeypatch.setattr(virtualenv, "_user", lambda: "celery")
    message = refusal(tmp_path)
    assert "not readable by user celery" in message
    assert f"chmod -R a+rX {tmp_path}" in message


def test_a_real_venv_made_with_system_site_packages_is_accepted(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    site_dir = virtualenv.check(str(venv))
    assert site_dir == str(venv / "lib" / f"python{RUNNING}" / "site-packages")


def test_a_real_venv_without_system_site_packages_is_refused(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert "made without --system-site-packages" in refusal(venv)


@pytest.fixture
def clean_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield sys.path
    for name in ("celeryd_venv_probe",):
        sys.modules.pop(name, None)


def test_activate_appends_site_packages_after_debians_paths(tmp_path, clean_path):
    site_dir = fake_venv(tmp_path)
    (site_dir / "celeryd_venv_probe.py").write_text("WHERE = 'venv'\n")
    extra = tmp_path / "extra"
    extra.mkdir()
    (site_dir / "extra.pth").write_text(f"{extra}\n")
    before = list(sys.path)
    assert virtualenv.activate(config_of(tmp_path)) == str(site_dir)
    assert sys.path[:len(before)] == before  # nothing moved ahead of Debian's paths
    assert sys.path[len(before):] == [str(site_dir), str(extra)]  # .pth files are honoured
    import celeryd_venv_probe

    assert celeryd_venv_probe.WHERE == "venv"
    import celery

    assert not celery.__file__.startswith(str(tmp_path))


def test_activate_without_a_venv_changes_nothing(clean_path):
    before = list(sys.path)
    assert virtualenv.activate(config_of(None)) is None
    assert sys.path == before


def test_activate_refuses_a_bad_venv_before_touching_sys_path(tmp_path, clean_path):
    before = list(sys.path)
    with pytest.raises(ConfigError):
        virtualenv.activate(config_of(tmp_path / "nope"))
    assert sys.path == before


def test_a_venv_copy_of_a_debian_package_is_reported_as_shadowed(tmp_path, clean_path):
    import yaml  # Debian's python3-yaml, distribution PyYAML

    site_dir = fake_venv(tmp_path)
    for name, version in (("PyYAML", "0.0.1"), ("pip", "0.0.1"), ("celeryd-venv-only", "1")):
        info = site_dir / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    virtualenv.activate(config_of(tmp_path), warn=lines.append)
    assert len(lines) == 1, lines  # pip is tooling; the venv-only package shadows nothing
    assert lines[0].startswith("celeryd: tasks.virtualenv: PyYAML 0.0.1 in the venv is shadowed "
                               f"by PyYAML {yaml.__version__}")


def write_config(tmp_path, venv):
    path = tmp_path / "celeryd.yaml"
    path.write_text(f"tasks:\n  virtualenv: {venv}\n")
    return str(path)


def test_the_worker_refuses_to_start_on_a_bad_venv_with_exit_3(tmp_path, capsys):
    (tmp_path / "not-a-venv").mkdir()
    assert worker.main(["--config", write_config(tmp_path, tmp_path / "not-a-venv")]) == 3
    err = capsys.readouterr().err
    assert err == (f"celeryd: tasks.virtualenv: {tmp_path / 'not-a-venv'}: not a virtual "
                   f"environment (no pyvenv.cfg); make one with: {sys.executable} -m venv "
                   f"--system-site-packages {tmp_path / 'not-a-venv'}\n")


def test_reload_checks_the_venv_of_the_new_config(tmp_path):
    # worker.load_config is what SIGHUP runs before stopping anything: it must refuse.
    args = worker.parse_args(["--config", write_config(tmp_path, tmp_path / "gone")])
    with pytest.raises(ConfigError, match="tasks.virtualenv: .*/gone: no such directory"):
        worker.load_config(args)
    fake_venv(tmp_path / "gone")
    assert worker.load_config(args).tasks.virtualenv == str(tmp_path / "gone")
