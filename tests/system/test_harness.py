"""The container harness itself: each suite boots, runs commands and leaves nothing behind."""

import os
import subprocess
import time

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
    assert bare.run(['hostname']).stdout.strip() == bare.name
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


def fake_debootstrap(monkeypatch, fail=False):
    """Replace only debootstrap (60 s) in module._sh; return the list of its calls."""
    calls, real = [], module._sh

    def sh(cmd, *args, **kwargs):
        if cmd[0] != 'debootstrap':
            return real(cmd, *args, **kwargs)
        calls.append(cmd)
        os.mkdir(os.path.join(cmd[-2], 'etc'))
        if fail:
            raise module.CommandFailed(1, cmd, '', 'interrupted')

    monkeypatch.setattr(module, '_sh', sh)
    return calls


def test_pristine_rootfs_rebuilds_an_unmarked_hand_made_rootfs_and_then_reuses_it(
        prerequisites, tmp_path, monkeypatch):
    os.makedirs(tmp_path / 'trixie' / 'hand-made')
    calls = fake_debootstrap(monkeypatch)

    path = module.pristine_rootfs('trixie', cache=str(tmp_path))
    module.pristine_rootfs('trixie', cache=str(tmp_path))

    assert len(calls) == 1 and calls[0][-1] == module.host_mirror()
    assert sorted(os.listdir(path)) == [module.MARKER, 'etc']
    assert sorted(os.listdir(tmp_path)) == ['.trixie.lock', 'trixie']


def test_pristine_rootfs_interrupted_build_leaves_no_cache(prerequisites, tmp_path, monkeypatch):
    fake_debootstrap(monkeypatch, fail=True)

    with pytest.raises(module.CommandFailed):
        module.pristine_rootfs('bookworm', cache=str(tmp_path))

    assert os.listdir(tmp_path) == ['.bookworm.lock']


def test_containers_on_a_bridge_of_our_own_reach_each_other_and_leave_no_link(prerequisites):
    serve = ('import socket; c, _ = socket.create_server(("10.231.0.12", 7777)).accept(); '
             'c.send(b"hi")')
    fetch = 'import socket; print(socket.create_connection(("10.231.0.12", 7777), 5).recv(9))'
    with module.Bridge() as bridge:
        with module.Container('trixie', bridge.name, bridge.address(11)) as a, \
                module.Container('bookworm', bridge.name, bridge.address(12)) as b:
            a.boot()
            b.boot()
            # the host's python3 in each container's network namespace (minbase has no tools)
            server = subprocess.Popen(['nsenter', '-t', str(b.pid), '-n', '/usr/bin/python3',
                                       '-c', serve])
            try:
                time.sleep(0.5)
                client = subprocess.run(['nsenter', '-t', str(a.pid), '-n', '/usr/bin/python3',
                                         '-c', fetch], capture_output=True, text=True, timeout=30)
            finally:
                server.kill()
                server.wait()

    assert client.stdout.strip() == "b'hi'", client.stderr
    links = subprocess.run(['ip', '-o', 'link'], capture_output=True, text=True).stdout
    assert bridge.name not in links


def test_run_timeout_does_not_wait_for_children_that_hold_the_output_open(bare):
    started = time.monotonic()

    with pytest.raises(subprocess.TimeoutExpired):
        bare.run('sleep 300 & sleep 300', timeout=2)

    assert time.monotonic() - started < 30
