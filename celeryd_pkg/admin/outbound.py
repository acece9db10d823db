"""What the worker unit lets tasks reach (IPAddressDeny=any, then localhost, the broker that
join allowed and worker.outbound), and its memory guardrails: celeryd-admin check's lines."""

import ipaddress
import socket

__all__ = ["reach", "worker_units_installed", "store_shut_out", "memory_limits"]


def reach(settings):
    """What the worker units let tasks connect to (the drop-in celeryd-generator writes from
    worker.outbound, beside the unit's localhost and the broker that join allowed)."""
    outbound = sorted(set(settings.worker.outbound))
    if "any" in outbound:
        return "tasks may reach: any address (worker.outbound: [any])"
    others = ", ".join(outbound) if outbound else "nothing else (set worker.outbound to allow more)"
    return f"tasks may reach: localhost, the broker ({settings.broker.host}), and: {others}"


def worker_units_installed(root="/"):
    """Whether this host has a worker unit, whose IPAddressDeny= applies (not a client)."""
    from celeryd_pkg.admin import join

    return bool(join.installed_units(root))


def store_shut_out(settings):
    """The addresses of a result store on another host than the broker that worker.outbound
    does not let the worker reach ([] when it may, or when the name does not resolve: the
    store step says that)."""
    host = settings.results.host
    outbound = set(settings.worker.outbound)
    if settings.results.backend != "redis" or not host or host == settings.broker.host \
            or "any" in outbound:
        return []
    addresses = _addresses(host)
    addresses -= _addresses(settings.broker.host)  # the store on the broker, by another name
    networks = []
    for entry in outbound - {"localhost", "link-local", "multicast"}:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            pass

    def allowed(address):
        ip = ipaddress.ip_address(address.split("%")[0])
        return (ip.is_loopback or ("link-local" in outbound and ip.is_link_local)
                or any(ip.version == net.version and ip in net for net in networks))
    return sorted(a for a in addresses if not allowed(a))


def _addresses(host):
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()


def memory_limits(worker):
    """The memory guardrails that are set, in words, or '' when none is."""
    parts = []
    if worker.memory_high:
        parts.append(f"throttled above {worker.memory_high} (worker.memory_high)")
    if worker.memory_max:
        parts.append(f"the largest child killed above {worker.memory_max} (worker.memory_max)")
    if worker.max_memory_per_child:
        parts.append(f"a child above {worker.max_memory_per_child} KiB replaced once its task "
                     f"ends (worker.max_memory_per_child)")
    return "; ".join(parts)
