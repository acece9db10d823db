"""The worker units' IPAddressAllow= drop-in for a remote broker, written by `join`.

The units allow only localhost (IPAddressDeny=any); a worker whose broker is on another host
must be let through to that host's addresses, and to the resolver's when it is named by DNS.
"""

import ipaddress
import socket
import subprocess
from pathlib import Path

from celeryd_pkg import files
from celeryd_pkg.errors import BrokerUnreachable

__all__ = ["UNITS", "DROPIN", "broker_addresses", "allow_broker"]

UNITS = ("celery-worker.service", "celery-worker@.service")
DROPIN = "50-celeryd-broker.conf"
UNIT_DIRS = ("lib/systemd/system", "usr/lib/systemd/system")


def broker_addresses(host, root="/"):
    """Return the sorted addresses a worker needs to reach host: its own, and the non-local
    name servers of root/etc/resolv.conf when host is a name. Raise BrokerUnreachable if it
    does not resolve."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise BrokerUnreachable(f"celeryd-admin join: cannot resolve broker host '{host}' "
                                f"({getattr(error, 'strerror', None) or error}); nothing "
                                f"written") from None
    addresses = {info[4][0] for info in infos}
    try:
        with open(Path(root) / "etc/resolv.conf") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    addresses.add(fields[1])
    except OSError:
        pass
    return sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)


def allow_broker(host, root="/"):
    """Write the drop-in letting each installed worker unit reach host; reload systemd if it
    runs. Return the paths written ([] when no worker unit is installed, as on a host with
    only celery-submit)."""
    root = Path(root)
    installed = [unit for unit in UNITS
                 if any((root / d / unit).exists() for d in UNIT_DIRS)]
    if not installed:
        return []
    addresses = broker_addresses(host, root)
    text = (f"# Written by celeryd-admin join: the worker may reach its broker {host}.\n"
            f"[Service]\n" + "".join(f"IPAddressAllow={a}\n" for a in addresses))
    written = []
    for unit in installed:
        path = root / "etc/systemd/system" / f"{unit}.d" / DROPIN
        files.replace(path, text, "celeryd-admin join")
        written.append(str(path))
    if str(root) == "/" and Path("/run/systemd/system").exists():
        subprocess.run(["systemctl", "daemon-reload"], check=False, capture_output=True)
    return written
