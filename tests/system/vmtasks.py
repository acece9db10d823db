"""An operator's task module for the VM proofs (tests/system/test_vm.py).

Installed in the VM as /srv/vmtasks/vmtasks.py and loaded by the worker through
tasks.modules: [vmtasks] and tasks.pythonpath: [/srv/vmtasks], as an operator's own code is.
Errors are left to propagate: celery-submit then names the exception (PermissionError for a
UDP send the unit's IP filter drops, TimeoutError for a TCP connect it drops).
"""

import os
import socket

from celery import shared_task

PAGE = 4096


@shared_task(name='vmtasks.udp')
def udp(host, port):
    """Send one UDP datagram to host:port; return 'sent'."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b'celeryd-vm', (host, port))
    return 'sent'


@shared_task(name='vmtasks.connect')
def connect(host, port, timeout=5):
    """Open a TCP connection to host:port within timeout seconds; return 'connected'."""
    with socket.create_connection((host, port), timeout=timeout):
        return 'connected'


def _touched(mib):
    """Return mib MiB of memory with every page written, so it is really resident."""
    block = bytearray(mib << 20)
    block[::PAGE] = b'\x01' * len(range(0, len(block), PAGE))
    return block


@shared_task(name='vmtasks.hog')
def hog(mib, step=16):
    """Allocate mib MiB in steps, keeping all of it: past the unit's MemoryMax= the kernel's
    OOM killer ends this pool child. Return mib if it ever finishes."""
    held = [_touched(step) for _ in range(0, mib, step)]
    return len(held) * step


@shared_task(name='vmtasks.grow')
def grow(mib):
    """Use mib MiB once, free it, and return this child's pid (its peak RSS stays high)."""
    _touched(mib)
    return os.getpid()


@shared_task(name='vmtasks.pid')
def pid():
    """Return the pid of the pool child running this task."""
    return os.getpid()
