"""A real Debian 13 VM (qemu, software emulation) for the proofs that need cgroup v2.

Why a VM: these machines and their nspawn containers run on the legacy cgroup hierarchy,
where systemd cannot enforce IPAddressDeny=, MemoryMax= or OOMPolicy= (a container test
passes whatever the unit says). Debian's own kernel booted under qemu gives systemd pure
cgroup v2. KVM does not work here (nested paravirtual mode), so TCG: a boot takes about a
minute, and the caller boots one VM for all its proofs (/work/shared/vm.md has the recipe).

Flow: a cached kernel-bearing rootfs (pristine trixie + kernel + rabbitmq-server) is copied,
the .debs are installed in a chroot beside the image's own running broker (so the postinst
provisions the account as on a server), the copy becomes a fresh ext4 disk, and the VM runs
the share's guest.py once booted, writes its results into the share and powers off.
"""

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from tests.system import harness

__all__ = ['VmError', 'check_prerequisites', 'base_rootfs', 'Vm']

SUITE = 'trixie'
BASE = f'{SUITE}-vm'  # CACHE/trixie-vm: the kernel-bearing base rootfs
MARKER, FORMAT = '.celeryd-test-vm', '2'  # bump FORMAT to rebuild the cached base
PACKAGES = ('linux-image-amd64', 'initramfs-tools', 'udev', 'kmod', 'zstd', 'iproute2',
            'rabbitmq-server', 'python3-celery', 'python3-yaml', 'python3-sdnotify')
TOOLS = ('qemu-system-x86_64', 'mkfs.ext4', 'timeout', 'unshare', 'chroot', 'truncate')
HOSTNAME = 'celeryd-vm'
GUEST_UNIT = 'celeryd-vmtest.service'
# Runs the share's script once the system is up, only with "celeryd-vmtest" on the kernel
# command line, and powers off at once whatever the script did (9p writes are synchronous).
GUEST_UNIT_TEXT = """[Unit]
Description=celeryd VM proofs: run the host's script from the 9p share, then power off
ConditionKernelCommandLine=celeryd-vmtest
After=basic.target
SuccessAction=poweroff-immediate
FailureAction=poweroff-immediate

[Service]
Type=oneshot
ExecStartPre=/sbin/modprobe -a 9pnet_virtio 9p
ExecStartPre=/bin/mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt
ExecStart=/usr/bin/python3 -u /mnt/guest.py
StandardOutput=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity
"""
GUEST_FILES = {f'/etc/systemd/system/{GUEST_UNIT}': GUEST_UNIT_TEXT,
               '/etc/systemd/system/multi-user.target.d/celeryd-vmtest.conf':
                   f'[Unit]\nWants={GUEST_UNIT}\n'}
ANSI = re.compile(r'\x1b\[[0-9;]*m')  # systemd's colours on the console
# No getty on ttyS0: once a login prompt owns the console systemd stops printing there.
# panic=1: a kernel that panics reboots, which -no-reboot turns into qemu's exit, at once
# instead of at the timeout (see Vm.run).
APPEND = ('root=/dev/vda rw console=ttyS0 loglevel=4 systemd.unified_cgroup_hierarchy=1 '
          'systemd.show_status=1 celeryd-vmtest systemd.mask=serial-getty@ttyS0.service '
          'panic=1')
# Boots tried when the guest kernel panics before systemd starts: seen once in a CI run
# (an int3 oops in sched_clock_cpu at 3 s, under TCG with two vCPUs), every proof then
# failing on the 600 s timeout. Nothing of the image has been used by then.
BOOTS = 3


class VmError(RuntimeError):
    """The VM could not be built, booted, or did not report."""


def check_prerequisites():
    """Raise VmError naming what is missing to build and boot the VM here."""
    missing = [tool for tool in TOOLS if not shutil.which(tool, path=harness.ENV['PATH'])]
    if os.geteuid() != 0 or missing:
        raise VmError(f'the VM proofs need root (uid now {os.geteuid()}) and '
                      f'{", ".join(missing) or "nothing more"}: run `make deps` as root '
                      f'(packages qemu-system-x86, e2fsprogs)')
    harness.check_prerequisites()


def chroot(root, cmd, isolate=(), prelude='', timeout=900):
    """Run cmd chrooted in root with /proc, /dev and /sys, in a private mount namespace and
    the namespaces of isolate (unshare options, e.g. --net); prelude runs before, outside."""
    script = (f'{prelude}mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && '
              'mount -t sysfs sys "$0/sys" && exec chroot "$0" "$@"')
    return harness._sh(['unshare', '--mount', '--propagation', 'private', *isolate, '--',
                        'sh', '-c', script, root, *cmd], timeout=timeout)


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), 'w') as f:
        f.write(text)
    os.chmod(path, mode)


def _read(path):
    with contextlib.suppress(OSError), open(path, errors='replace') as f:
        return f.read()


def _copy_debs(src, dst):
    """Copy the .debs of src that dst lacks (the apt cache shared with the container tests)."""
    os.makedirs(src, exist_ok=True)
    new = [f'{src}/{name}' for name in os.listdir(src)
           if name.endswith('.deb') and not os.path.exists(f'{dst}/{name}')]
    if new:
        harness._sh(['cp', '-p', '--reflink=auto', *new, dst])


@contextlib.contextmanager
def _no_service_starts(root):
    """policy-rc.d answering 101: packages install in the chroot without starting anything."""
    _write(f'{root}/usr/sbin/policy-rc.d', harness.POLICY, 0o755)
    try:
        yield
    finally:
        os.unlink(f'{root}/usr/sbin/policy-rc.d')


def _download(root, args, cache):
    """apt-get install --download-only args in the chroot, with the host's network (updating
    stale package lists once): the install itself then runs offline."""
    shared, archives = f'{cache}/{SUITE}-apt', f'{root}/var/cache/apt/archives'
    _copy_debs(shared, archives)
    download = harness.APT + ['install', '-y', '--download-only', *args]
    try:
        chroot(root, download)
    except harness.CommandFailed:
        chroot(root, harness.APT + ['update'])
        chroot(root, download)
    _copy_debs(archives, shared)


# Starts the image's RabbitMQ as its unit would; waits until it is up, fails (sh -e) if never.
BROKER_UP = """cd /var/lib/rabbitmq
runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server \\
    >>/var/log/rabbitmq/image-build.log 2>&1 &
for try in $(seq 120); do rabbitmqctl -q await_startup >/dev/null 2>&1 && break; sleep 1; done
rabbitmqctl -q await_startup
"""


def _install_beside_broker(root, debs):
    """Install the debs in the chroot while the image's own RabbitMQ runs there, natively, in
    private network, UTS (the VM's host name, so the broker's node name) and PID namespaces:
    the postinst provisions the broker account as on a running server, and the VM boots
    provisioned (under emulation every rabbitmqctl call of a provision takes a minute)."""
    # No --no-download: apt then fails on local .debs ("Pathname to install is not absolute").
    inner = f'{BROKER_UP}apt-get -q -y install {" ".join(debs)}\nrabbitmqctl -q stop\n'
    proc = chroot(root, ['sh', '-ec', inner], ['--net', '--uts', '--pid', '--fork'],
                  f'hostname {HOSTNAME} && ip link set lo up && ', timeout=600)
    if not os.path.exists(f'{root}/etc/celeryd/credentials'):
        output = (proc.stdout + proc.stderr)[-3000:]
        raise VmError(f'installing the debs beside a running RabbitMQ provisioned no broker '
                      f'account (no /etc/celeryd/credentials):\n{output}')


def base_rootfs(cache=harness.CACHE):
    """Return CACHE/trixie-vm: pristine trixie + kernel + broker, built once (the kernel
    install is slow), rebuilt when its marker's format differs."""
    path, marker = f'{cache}/{BASE}', f'{cache}/{BASE}/{MARKER}'
    stamp = f'{BASE} {FORMAT} {",".join(PACKAGES)}'
    os.makedirs(cache, exist_ok=True)
    with open(f'{cache}/.{BASE}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError), open(marker) as f:
            if f.readline().strip() == stamp:
                return path
        pristine = harness.pristine_rootfs(SUITE, cache)
        for stale in os.listdir(cache):
            if stale.startswith(f'.{BASE}.build-'):
                harness.remove_tree(f'{cache}/{stale}')
        build = tempfile.mkdtemp(prefix=f'.{BASE}.build-', dir=cache)
        try:
            harness._sh(['cp', '-a', '--reflink=auto', f'{pristine}/.', build])
            os.unlink(f'{build}/{harness.MARKER}')
            _configure_base(build, cache)
            _write(f'{build}/{MARKER}', f'{stamp}\n{time.strftime("%Y-%m-%dT%H:%M:%S")}\n')
            harness.remove_tree(path)
            os.rename(build, path)
        finally:
            harness.remove_tree(build)
        return path


def _configure_base(root, cache):
    # MODULES=list with what mounts / from virtio-blk keeps the initrd at 10 MB (35 otherwise).
    _write(f'{root}/etc/initramfs-tools/conf.d/celeryd-vm.conf', 'MODULES=list\n')
    with open(f'{root}/etc/initramfs-tools/modules', 'a') as f:
        f.write('virtio_pci\nvirtio_blk\next4\n')
    with _no_service_starts(root):
        chroot(root, harness.APT + ['update'])
        packages = ['--no-install-recommends', *PACKAGES]
        _download(root, packages, cache)
        chroot(root, harness.APT + ['install', '-y', *packages], ['--net'])
    chroot(root, ['apt-get', 'clean'])
    chroot(root, ['update-initramfs', '-u', '-k', 'all'])
    _write(f'{root}/etc/fstab', '/dev/vda / ext4 rw,errors=remount-ro 0 0\n')  # no fsck: none
    _write(f'{root}/etc/hostname', f'{HOSTNAME}\n')
    _write(f'{root}/etc/hosts', harness.HOSTS + f'127.0.1.1\t{HOSTNAME}\n')


class Vm(contextlib.AbstractContextManager):
    """One VM run: image from the base + debs + files, boot, the guest script, power off.

    files: {path in the image: text}; share_files: {name in the 9p share: text}, with
    'guest.py'. After run(), output(NAME) reads what the guest wrote to the share's out/."""

    def __init__(self, debs, files=None, share_files=None, mem_mib=1024, smp=2, timeout=600,
                 cache=harness.CACHE):
        self.debs, self.files, self.share_files = list(debs), files or {}, share_files or {}
        self.mem_mib, self.smp, self.timeout, self.cache = mem_mib, smp, timeout, cache
        self.timings, self.max_rss_kib, self.exit_code, self._proc = {}, 0, None, None
        self.dir = tempfile.mkdtemp(prefix=f'celeryd-vm-{os.getpid()}.', dir='/var/tmp')
        self.root, self.share = f'{self.dir}/root', f'{self.dir}/share'
        self.disk, self.serial_path = f'{self.dir}/disk.img', f'{self.dir}/serial.log'

    def __exit__(self, *exc):
        self.close()

    def build(self):
        """Copy the base, install the debs and files, make the disk image and the share."""
        started = time.monotonic()
        base = base_rootfs(self.cache)
        self.timings['base'] = round(time.monotonic() - started, 1)
        harness._sh(['cp', '-a', '--reflink=auto', base, self.root])
        for name in ('vmlinuz', 'initrd.img'):  # Debian's symlinks to the installed kernel
            shutil.copy(f'{base}/{name}', f'{self.dir}/{name}')
        os.makedirs(f'{self.root}/root/debs')
        local = [shutil.copy2(deb, f'{self.root}/root/debs')[len(self.root):] for deb in self.debs]
        with _no_service_starts(self.root):
            _download(self.root, local, self.cache)
            _install_beside_broker(self.root, local)
        chroot(self.root, ['apt-get', 'clean'])
        for path, text in {**self.files, **GUEST_FILES}.items():
            _write(self.root + path, text)
        harness._sh(['truncate', '-s', '4G', self.disk])
        harness._sh(['mkfs.ext4', '-q', '-F', '-L', 'vmroot', '-E', 'root_owner=0:0',
                     '-d', self.root, self.disk])
        harness.remove_tree(self.root)  # the disk has it now
        os.makedirs(f'{self.share}/out')
        for name, text in self.share_files.items():
            _write(f'{self.share}/{name}', text, 0o755)
        self.timings['build'] = round(time.monotonic() - started, 1)

    def run(self):
        """Boot the VM (again, up to BOOTS times, when its kernel panics before systemd
        starts); return qemu's exit code (124: the timeout hit). The serial console goes to
        serial.log (an early panic's to serial.log.N)."""
        for boot in range(1, BOOTS + 1):
            code = self._boot()
            console = self.serial()
            # systemd says Welcome (systemd.show_status) before it runs anything of the image.
            if boot == BOOTS or 'Kernel panic' not in console or 'Welcome to' in console:
                return code
            os.rename(self.serial_path, f'{self.serial_path}.{boot}')
        return code

    def _boot(self):
        """Boot the VM once under `timeout`; return qemu's exit code. The serial console,
        timestamped from the start, goes to serial.log."""
        accel = ['-accel', 'tcg,thread=multi,tb-size=256', '-cpu', 'max']  # tb-size: RSS/2
        qemu = ['qemu-system-x86_64', *accel, '-m', str(self.mem_mib), '-smp', str(self.smp),
                '-machine', 'pc', '-no-reboot', '-kernel', f'{self.dir}/vmlinuz',
                '-initrd', f'{self.dir}/initrd.img', '-append', APPEND,
                '-drive', f'file={self.disk},if=virtio,format=raw,cache=unsafe',
                '-virtfs', f'local,path={self.share},mount_tag=host0,'
                           'security_model=passthrough,id=host0',
                '-nic', 'none', '-display', 'none', '-serial', 'stdio', '-monitor', 'none',
                '-pidfile', f'{self.dir}/qemu.pid']
        started = time.monotonic()
        self._proc = subprocess.Popen(
            ['timeout', '--kill-after=10', str(self.timeout), *qemu], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=harness.ENV,
            start_new_session=True)
        (sampler := threading.Thread(target=self._sample_rss, daemon=True)).start()
        with open(self.serial_path, 'w') as log:
            for line in self._proc.stdout:
                text = ANSI.sub('', line.decode('utf-8', 'replace').rstrip())
                log.write(f'[{time.monotonic() - started:7.2f}] {text}\n')
                log.flush()
        self.exit_code = self._proc.wait()
        sampler.join(5)
        self.timings['qemu'] = round(time.monotonic() - started, 1)
        return self.exit_code

    def _sample_rss(self):
        """Record qemu's peak resident memory (host view), once a second."""
        pid = None
        while self._proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                if pid is None:
                    with open(f'{self.dir}/qemu.pid') as f:
                        pid = int(f.read())
                with open(f'/proc/{pid}/status') as f:
                    rss = next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))
                self.max_rss_kib = max(self.max_rss_kib, rss)
            time.sleep(1)

    def serial(self):
        """Return the serial console so far (timestamps in seconds since qemu started)."""
        return _read(self.serial_path) or ''

    def output(self, name):
        """Return the text of share/out/NAME that the guest wrote, or None."""
        return _read(f'{self.share}/out/{name}')

    def close(self):
        """Kill qemu (and timeout) if still running, remove the disk and everything else."""
        if self._proc and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(30)
        harness.remove_tree(self.dir)
