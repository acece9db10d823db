"""The worker units' IPAddressAllow= drop-in for a remote broker, written by `join`.

The units allow only localhost (IPAddressDeny=any); a worker whose broker is on another host
must be let through to that host's addresses, and to the resolver's when it is named by DNS.
"""

import ipaddress
import os
import socket
import subprocess
from pathlib import Path

from celeryd_pkg.errors import BrokerUnreachable, ConfigError

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
        directory = root / "etc/systemd/system" / f"{unit}.d"
        path = directory / DROPIN
        try:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            tmp = directory / f".{DROPIN}.tmp"
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as error:
            raise ConfigError(f"celeryd-admin join: cannot write {path} "
                              f"({error.strerror}); run as root") from None
        written.append(str(path))
    if str(root) == "/" and Path("/run/systemd/system").exists():
        subprocess.run(["systemctl", "daemon-reload"], check=False, capture_output=True)
    return written
