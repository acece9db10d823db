"""The container harness itself: each suite boots, runs commands and leaves nothing behind."""

import os
import subprocess

import pytest

from tests.system import harness as module

PYTHON_OF_SUITE = {'trixie': 'Python 3.13.', 'bookworm': 'Python 3.11.'}


def test_booted_container_reaches_running_or_degraded(bare):
    state = bare.run(['systemctl', 'is-system-running'], check=False).stdout.strip()

    assert state in ('running', 'degraded'), bare.run('systemctl --failed --no-pager').stdout
    assert bare.state in ('running', 'degraded')


def test_predownloaded_python3_installs_offline_and_is_the_one_of_its_suite(prerequisites, suite):
    with module.Container(suite) as machine:
        machine.prepare(extra_packages=['python3'])
        assert not os.path.exists(machine.root + '/usr/sbin/policy-rc.d')
        machine.boot()

        machine.run(['apt-get', 'install', '--no-download', '-y', 'python3'], timeout=300)
        version = machine.run(['python3', '--version']).stdout

    assert version.startswith(PYTHON_OF_SUITE[suite])


def test_run_reports_exit_code_input_and_user(bare):
    assert bare.run(['cat'], input='hello').stdout == 'hello'
    assert bare.run(['id', '-un'], user='nobody').stdout.strip() == 'nobody'
    assert bare.run('exit 3', check=False).returncode == 3
    with pytest.raises(module.CommandFailed):
        bare.run(['false'])


def test_container_exit_leaves_no_process_mount_or_directory(prerequisites, suite):
    with module.Container(suite) as container:
        container.boot()
        nspawn, init, root = container._proc.pid, container.pid, container.root
        assert os.path.exists(f'/proc/{init}')

    assert not os.path.exists(f'/proc/{nspawn}') and not os.path.exists(f'/proc/{init}')
    leftover = subprocess.run(['pgrep', '-f', container.name], capture_output=True, text=True)
    assert leftover.stdout == ''
    assert module.mounts_under(root) == []
    assert not os.path.exists(container.dir)


def test_container_is_removed_when_the_body_raises(prerequisites, suite):
    with pytest.raises(KeyboardInterrupt):
        with module.Container(suite) as container:
            container.boot()
            raise KeyboardInterrupt

    assert module.mounts_under(container.root) == []
    assert not os.path.exists(container.dir)


def test_pristine_rootfs_carries_the_marker_of_its_suite(prerequisites, suite):
    path = module.pristine_rootfs(suite)

    with open(os.path.join(path, module.MARKER)) as marker:
        assert marker.read().split()[0] == suite
