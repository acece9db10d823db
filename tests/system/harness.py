"""Booted Debian containers (systemd-nspawn) for the system tests."""

import atexit
import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

__all__ = ['SUITES', 'HarnessError', 'CommandFailed', 'pristine_rootfs', 'Container', 'Bridge',
           'wait_until']

CACHE = '/var/cache/celeryd-test'
SUITES = ('trixie', 'bookworm')
MARKER, FORMAT = '.celeryd-test-rootfs', '2'  # bump FORMAT to rebuild every cached rootfs
INCLUDE = 'systemd,systemd-sysv,dbus'
TOOLS = ('debootstrap', 'systemd-nspawn', 'nsenter', 'unshare', 'ip', 'pgrep')
ENV = {'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C.UTF-8',
       'HOME': '/root', 'TERM': 'dumb', 'DEBIAN_FRONTEND': 'noninteractive'}
APT = ['apt-get', '-q', '-o', 'DPkg::Lock::Timeout=600']
POLICY = '#!/bin/sh\n# celeryd-test: no service starts during image preparation\nexit 101\n'
HOSTS = '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n'
_names, _live = itertools.count(), set()


class HarnessError(RuntimeError):
    """A prerequisite or a container operation failed."""


class CommandFailed(subprocess.CalledProcessError):
    """A command exited non-zero; str() shows the tail of its output."""

    def __str__(self):
        tail = ((self.stdout or '') + (self.stderr or ''))[-3000:]
        return f'{super().__str__()}\n--- output (tail) ---\n{tail}'


def check_prerequisites():
    """Raise HarnessError naming what is missing to boot containers here."""
    missing = [tool for tool in TOOLS if not shutil.which(tool, path=ENV['PATH'])]
    if os.geteuid() != 0 or missing:
        raise HarnessError(f'system tests need root (uid now {os.geteuid()}) and {TOOLS}, missing'
                           f' {missing}: run `make deps` as root (debootstrap, systemd-container)')


def host_mirror():
    """Return the Debian mirror URI the host's apt uses. Raise HarnessError if none."""
    uris = []
    for path, pattern in (('/etc/apt/sources.list.d/debian.sources', r'^URIs:\s*(\S+)'),
                          ('/etc/apt/sources.list', r'^deb\s+(?:\[[^]]*\]\s+)?(\S+)')):
        with contextlib.suppress(OSError), open(path) as f:
            uris += [uri for uri in re.findall(pattern, f.read(), re.M) if 'security' not in uri]
    if not uris:
        raise HarnessError('no Debian mirror in the host\'s apt sources')
    return uris[0]


def _kill(pid, signo):
    """Send signo to pid unless it is None or gone."""
    with contextlib.suppress(ProcessLookupError, TypeError):
        os.kill(pid, signo)


def _sh(cmd, check=True, timeout=900, input=None):
    """Run cmd with a clean environment; return CompletedProcess, raise CommandFailed if check.
    On timeout or interrupt kill its process group, or nsenter's child would hold the pipes."""
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, cwd='/',
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    if check and proc.returncode:
        raise CommandFailed(proc.returncode, cmd, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def mounts_under(path):
    """Return the mount points at or below path, deepest first."""
    path = os.path.realpath(path)
    with open('/proc/mounts') as f:
        points = [line.split()[1].replace('\\040', ' ') for line in f]
    return sorted((p for p in points if p == path or p.startswith(path + '/')), reverse=True)


def remove_tree(path):
    """Unmount anything below path, then delete it without crossing file systems."""
    for point in mounts_under(path):
        _sh(['umount', '-l', point], check=False)
    if os.path.lexists(path):
        _sh(['rm', '-rf', '--one-file-system', path])


def pristine_rootfs(suite, cache=CACHE):
    """Return CACHE/<suite>, debootstrapping it unless it carries our marker (a hand-made or
    interrupted one is rebuilt beside it and swapped in)."""
    check_prerequisites()
    path, marker = os.path.join(cache, suite), os.path.join(cache, suite, MARKER)
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, f'.{suite}.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError), open(marker) as f:
            if f.read().split()[:2] == [suite, FORMAT]:
                return path
        for stale in os.listdir(cache):
            if stale.startswith((f'.{suite}.build-', f'.{suite}.old-')):
                remove_tree(os.path.join(cache, stale))
        build = tempfile.mkdtemp(prefix=f'.{suite}.build-', dir=cache)
        old = tempfile.mkdtemp(prefix=f'.{suite}.old-', dir=cache)
        try:
            os.chmod(build, 0o755)  # it becomes the container's /
            _sh(['debootstrap', '--variant=minbase', f'--include={INCLUDE}',
                 suite, build, host_mirror()], timeout=1800)
            with open(os.path.join(build, 'etc', 'hosts'), 'w') as f:  # as d-i: localhost
                f.write(HOSTS)
            with open(os.path.join(build, MARKER), 'w') as f:
                f.write(f'{suite} {FORMAT} {INCLUDE} {time.strftime("%Y-%m-%dT%H:%M:%S")}\n')
            if os.path.lexists(path):  # unmarked (hand-made or foreign): swap it out
                os.rename(path, os.path.join(old, suite))
            os.rename(build, path)
        finally:
            remove_tree(build)
            remove_tree(old)
        return path


class Container:
    """A throw-away copy of a pristine rootfs, prepared in a chroot, booted with nspawn."""

    deb_dir = '/root/debs'  # where prepare() puts the debs inside

    def __init__(self, suite, network_bridge=None, address=None, cache=CACHE):
        self.suite, self.bridge, self.address, self.cache = suite, network_bridge, address, cache
        self.name = f'celeryd-{suite}-{os.getpid()}-{next(_names)}'
        self.timings, self.state, self.pid, self._proc = {}, None, None, None
        pristine, started = pristine_rootfs(suite, cache), time.monotonic()
        self.dir = tempfile.mkdtemp(prefix=f'{self.name}.', dir='/var/tmp')
        _live.add(self)
        self.root, self.log_path = f'{self.dir}/root', f'{self.dir}/nspawn.log'
        try:
            _sh(['cp', '-a', '--reflink=auto', pristine, self.root])
            with open(f'{self.root}/etc/hostname', 'w') as f:  # debootstrap copied the host's
                f.write(f'{self.name}\n')
        except BaseException:
            self.stop()
            raise
        self.timings['copy'] = time.monotonic() - started

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def chroot(self, cmd, timeout=900):
        """Run cmd in a chroot of the copy (host network), /proc in a private mount namespace."""
        script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
        return _sh(['unshare', '--mount', '--propagation', 'private', '--',
                    'sh', '-c', script, self.root, *cmd], timeout=timeout)

    def prepare(self, debs=(), extra_packages=(), preinstall=()):
        """Copy debs in and fetch everything an offline `apt-get install ./*.deb EXTRA` needs."""
        if self._proc:
            raise HarnessError('prepare() runs before boot()')
        started = time.monotonic()
        os.makedirs(self.root + self.deb_dir, exist_ok=True)
        local = [shutil.copy2(deb, self.root + self.deb_dir)[len(self.root):] for deb in debs]
        policy = self.root + '/usr/sbin/policy-rc.d'
        with open(os.open(policy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755), 'w') as f:
            f.write(POLICY)
        try:
            self._apt_cache('in')
            self.chroot(APT + ['update'])
            if local or extra_packages:
                self.chroot(APT + ['install', '-y', '--download-only', *local, *extra_packages])
            if preinstall:
                self.chroot(APT + ['install', '-y', *preinstall])
            self._apt_cache('out')
        finally:
            os.unlink(policy)
        self.timings['prepare'] = time.monotonic() - started

    def _apt_cache(self, direction):
        """Share downloaded .debs across runs via CACHE/<suite>-apt (apt re-fetches a bad one)."""
        shared, archives = f'{self.cache}/{self.suite}-apt', self.root + '/var/cache/apt/archives'
        os.makedirs(shared, exist_ok=True)
        src, dst = (shared, archives) if direction == 'in' else (archives, shared)
        new = [f'{src}/{name}' for name in os.listdir(src)
               if name.endswith('.deb') and not os.path.exists(f'{dst}/{name}')]
        if new:
            _sh(['cp', '-p', '--reflink=auto', *new, dst])

    def boot(self, timeout=180):
        """Boot the copy with systemd-nspawn; return 'running' or 'degraded'."""
        started = time.monotonic()
        net = [f'--network-bridge={self.bridge}'] if self.bridge else ['--private-network']
        cmd = ['systemd-nspawn', '-D', self.root, '-M', self.name, '--register=no',
               '--keep-unit', *net, '--boot', '--console=pipe']
        with open(self.log_path, 'wb') as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          env=ENV, start_new_session=True)
        self.pid = self._find_init(started + 60)
        if self.bridge and self.address:
            for args in (['addr', 'add', self.address, 'dev', 'host0'],
                         ['link', 'set', 'host0', 'up']):
                _sh(['nsenter', '-t', str(self.pid), '-n', 'ip', *args])
        wait = ['systemctl', 'is-system-running', '--wait']
        while not self.state:  # systemctl fails until PID 1 has its private socket
            left = started + timeout - time.monotonic()
            proc = self.run(wait, check=False, timeout=max(left, 1))
            self.state = proc.stdout.strip() or (None if left > 0 else 'timeout')
            if self.state == 'offline' and left > 0:
                # Said (with "Failed to connect to ... bus") when asked before PID 1 listens:
                # seen once on each suite in one run, not a boot result.
                self.state = None
            time.sleep(0 if self.state else 0.2)
        if self.state not in ('running', 'degraded'):
            failed = self.run(['systemctl', '--failed', '--no-pager'], check=False)
            raise HarnessError(f'{self.name} booted to {self.state!r} {proc.stderr}\n'
                               + failed.stdout + failed.stderr)
        self.timings['boot'] = time.monotonic() - started
        return self.state

    def _find_init(self, deadline):
        """Poll nspawn's children until one is systemd: the container's PID 1 seen from here."""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HarnessError(f'systemd-nspawn exited {self._proc.returncode}:\n'
                                   + self.console()[-3000:])
            for pid in _sh(['pgrep', '-P', str(self._proc.pid)], check=False).stdout.split():
                with contextlib.suppress(OSError), open(f'/proc/{pid}/comm') as f:
                    if f.read().strip() == 'systemd':
                        return int(pid)
            time.sleep(0.1)
        raise HarnessError(f'no systemd under nspawn {self._proc.pid}:\n' + self.console())

    def console(self):
        """Return what nspawn and the container's console printed so far."""
        with open(self.log_path, errors='replace') as f:
            return f.read()

    def run(self, cmd, check=True, timeout=120, user=None, input=None):
        """Run cmd (list, or str for sh -c) inside the booted container; return CompletedProcess."""
        if not self.pid:
            raise HarnessError(f'{self.name} is not booted')
        cmd = ['sh', '-c', cmd] if isinstance(cmd, str) else list(cmd)
        if user:
            cmd = ['runuser', '-u', user, '--', *cmd]
        return _sh(['nsenter', '-t', str(self.pid), '-a', '--', *cmd], check, timeout, input)

    def cut_off(self, off=True):
        """Take the container's network link down (off) or up again: to every other host it
        looks powered off, while its processes run on and are back when the link is."""
        _sh(['nsenter', '-t', str(self.pid), '-n', 'ip', 'link', 'set', 'host0',
             'down' if off else 'up'])

    def journal(self, unit=None, lines=None):
        """Return this boot's journal (of one unit if given), possibly only its last lines."""
        cmd = ['journalctl', '-b', '--no-pager'] + (['-u', unit] if unit else [])
        proc = self.run(cmd + (['-n', str(lines)] if lines else []), check=False, timeout=60)
        return proc.stdout + proc.stderr

    def stop(self, timeout=60):
        """Shut down cleanly (SIGRTMIN+4 to PID 1), SIGKILL after timeout, remove the copy."""
        try:
            if self._proc and self._proc.poll() is None:
                _kill(self.pid, signal.SIGRTMIN + 4) if self.pid else self._proc.terminate()
                self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also on KeyboardInterrupt, which then propagates
            try:
                if self._proc and self._proc.poll() is None:
                    _kill(self.pid, signal.SIGKILL)  # PID 1 takes its PID namespace along
                    _kill(self._proc.pid, signal.SIGKILL)
                    self._proc.wait(30)
            finally:
                remove_tree(self.dir)
                _live.discard(self)
                self.pid = None


class Bridge:
    """A host bridge of our own for containers booted with network_bridge=NAME."""

    def __init__(self, name=None, subnet='10.231.0'):
        self.name, self.subnet = name or f'cdt{os.getpid() % 100000}b{next(_names)}', subnet

    def address(self, host):
        """Return the CIDR address of container number host on this bridge."""
        return f'{self.subnet}.{host}/24'

    def __enter__(self):
        _sh(['ip', 'link', 'add', self.name, 'type', 'bridge'])
        _sh(['ip', 'link', 'set', self.name, 'up'])
        return self

    def __exit__(self, *exc):
        _sh(['ip', 'link', 'del', self.name], check=False)


def restart_worker(machine):
    """systemctl restart celery-worker, once more if the start fails with 219/CGROUP: systemd
    252 in a legacy-hierarchy container can lose the unit's new cgroup right after a stop (seen
    on Debian 12 here); that is the container's, not the worker's, and a second start works."""
    restarted = machine.run(["systemctl", "restart", "celery-worker"], check=False, timeout=660)
    if restarted.returncode != 0:
        result = machine.run(["systemctl", "show", "-p", "ExecMainStatus", "--value",
                              "celery-worker"]).stdout.strip()
        assert result == "219", restarted.stderr  # anything else is ours
        machine.run(["systemctl", "reset-failed", "celery-worker"])
        machine.run(["systemctl", "start", "celery-worker"], timeout=660)


def wait_until(predicate, timeout=60, what='condition'):
    """Poll predicate every 0.5 s; return its first true value, or fail after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f'timed out after {timeout}s waiting for {what}')


@atexit.register
def _stop_all():  # last resort when a caller forgot the with statement
    for container in list(_live):
        container.stop(timeout=20)
