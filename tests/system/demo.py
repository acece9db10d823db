"""`make demo`: install the built .debs as a user would, start the worker and add 4 and 4.

On a host booted with systemd this installs on the host itself; elsewhere (systemd is not
PID 1) it boots a Debian 13 container with the test harness and runs the commands there.
"""

import glob
import os
import subprocess
import sys

from tests.system import harness

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMANDS = (
    'apt install -y ./*.deb rabbitmq-server',
    'systemctl start celery-worker',
    'systemctl status --no-pager celery-worker',
    'celery-submit add 4 4',
)


def systemd_is_pid1():
    """Return True when this machine was booted with systemd (sd_booted())."""
    with open('/proc/1/comm') as comm:
        return comm.read().strip() == 'systemd' and os.path.isdir('/run/systemd/system')


def show(command, proc):
    """Print a command as typed at a root prompt, then everything it printed."""
    print(f'$ {command}', flush=True)
    print(proc.stdout + proc.stderr, end='', flush=True)


def on_host(debs):
    """Run the commands on this host, from the directory holding the debs."""
    env = dict(harness.ENV, DEBIAN_FRONTEND='noninteractive')
    for command in COMMANDS:
        proc = subprocess.run(command, shell=True, cwd=os.path.dirname(debs[0]), env=env,
                              capture_output=True, text=True)
        show(command, proc)
        yield proc


def in_container(debs):
    """Run the commands in a booted trixie container that has the debs and their deps."""
    with harness.Container('trixie') as machine:
        machine.prepare(debs, ['rabbitmq-server'])
        print(f'# booted {machine.name}: {machine.boot()}', flush=True)
        for command in COMMANDS:
            proc = machine.run(f'cd {machine.deb_dir} && {command}', check=False, timeout=600)
            show(command, proc)
            yield proc


def main():
    """Return 0 when every command succeeded and celery-submit printed 8."""
    debs = sorted(glob.glob(os.path.join(REPO, 'build', 'debs', '*.deb')))
    if not debs:
        print('no build/debs/*.deb: run `make deb` first', file=sys.stderr)
        return 2
    try:
        procs = list(on_host(debs) if systemd_is_pid1() else in_container(debs))
    except harness.HarnessError as error:
        print(f'demo: {error}', file=sys.stderr)
        return 1
    ok = all(proc.returncode == 0 for proc in procs) and procs[-1].stdout.strip() == '8'
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
