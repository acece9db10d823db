"""celeryd-admin join: the credentials (and the broker's CA) from a join string, and the worker
and beat units' IPAddressAllow= drop-in for that broker.

The units allow only localhost (IPAddressDeny=any); a worker whose broker is on another host
must be let through to that host's addresses, and to the resolver's when it is named by DNS.
"""

import ipaddress
import os
import socket
import sys
from pathlib import Path

from celeryd_pkg import account, config, files
from celeryd_pkg.admin import systemctl
from celeryd_pkg.admin.cli import Command, config_option, group_option
from celeryd_pkg.errors import BrokerUnreachable, UsageError

__all__ = ["UNITS", "DROPIN", "broker_addresses", "installed_units", "allow_broker", "COMMANDS"]

UNITS = ("celery-worker.service", "celery-worker@.service", "celery-beat.service")
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


def installed_units(root="/"):
    """The worker and beat units installed under root (none on a host with only
    celery-submit)."""
    return [unit for unit in UNITS if any((Path(root) / d / unit).exists() for d in UNIT_DIRS)]


def allow_broker(hosts, root="/"):
    """Write the drop-in letting each installed worker and beat unit reach the broker's hosts
    (every node of a cluster); reload systemd if it runs. Return the paths written ([] when no
    worker unit is installed, as on a host with only celery-submit)."""
    root = Path(root)
    installed = installed_units(root)
    if not installed:
        return []
    addresses = sorted({a for host in hosts for a in broker_addresses(host, root)})
    text = (f"# Written by celeryd-admin join: the worker may reach its broker "
            f"{', '.join(hosts)}.\n"
            f"[Service]\n" + "".join(f"IPAddressAllow={a}\n" for a in addresses))
    written = []
    for unit in installed:
        path = root / "etc/systemd/system" / f"{unit}.d" / DROPIN
        files.replace(path, text, "celeryd-admin join")
        written.append(str(path))
    systemctl.daemon_reload(root)
    return written


def action_join(args):
    broker = account.from_url(_read_url(args.url))
    # A broker host joining the cluster has no worker, so no group celery: root's file.
    gid = 0 if "cluster" in broker and args.group == "celery" and not _group_exists("celery") \
        else account.resolve_group(args.group)
    main_file, conf_d, path, _ = config.config_paths(args.config)
    ca_pem = broker.pop("ca", None)
    if args.allow_plain:
        broker["allow_plain"] = True
    elif not broker["tls"] and not config.is_local_host(broker["host"]):
        print(f"celeryd-admin: warning: plain amqp:// to {broker['host']}: the password and "
              f"every task cross the network unencrypted; use an amqps:// join string "
              f"(celeryd-admin tls-setup on the broker host) or --allow-plain",
              file=sys.stderr)
    # Resolving the broker for the firewall drop-in may fail: before anything is written.
    allow_broker([host for host, _ in account.addresses(broker)],
                 os.environ.get("CELERYD_ROOT", "/"))
    node = broker.pop("cluster", None)
    joined_cluster = ""
    if node:  # a broker host: its rabbitmq-server becomes a node of the cluster first
        from celeryd_pkg.admin import cluster
        from celeryd_pkg.admin.rabbitmqctl import Rabbitmqctl

        cluster.join(Rabbitmqctl(), node, ca_pem)
        joined_cluster = f"; rabbitmq-server here is a node of {node['node']}'s cluster"
    if ca_pem:
        broker["ca_file"] = str(main_file.parent / "broker-ca.pem")
        files.replace(broker["ca_file"], ca_pem)
    results_password = broker.pop("results_password", None)
    # A join string without a store login keeps the one this host has.
    results = ({"user": broker["user"], "password": results_password} if results_password
               else account.load_results(path))
    account.save(path, broker, gid, results=results)
    stored = ""
    if results_password:
        from celeryd_pkg.admin import storeaccounts

        storeaccounts.store_results_here(conf_d / "20-results.yaml")
        stored = " with results kept in the result store there"
    print(f"joined {account.to_url(broker)}{stored}{joined_cluster}; check with: "
          f"celeryd-admin check")
    return 0


def _group_exists(name):
    import grp

    try:
        return bool(grp.getgrnam(name))
    except KeyError:
        return False


def _read_url(value):
    if value != "-":
        return value
    if sys.stdin is None:
        raise UsageError("celeryd-admin join: no standard input to read the URL from")
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("broker URL (not echoed): ")
    return sys.stdin.read()


def _arguments(parser):
    parser.add_argument("url", metavar="URL|-",
                        help="the join string from `celeryd-admin provision --for-host` "
                             "(amqps://USER:PASSWORD@HOST[:PORT]/VHOST[?ca=...]), or - to read "
                             "it from stdin (recommended: a command line is visible to every "
                             "local user)")
    parser.add_argument("--allow-plain", action="store_true",
                        help="accept plain amqp:// to another host without TLS (only on a "
                             "network you trust)")
    group_option(parser)
    config_option(parser)


COMMANDS = (
    Command("join", "write the credentials (and the broker's CA) from a join string, and let "
                    "the worker units reach the broker", action_join, _arguments),
)
