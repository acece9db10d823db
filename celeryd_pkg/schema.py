"""The configuration schema: every key, its type, default and meaning."""

from collections import namedtuple

__all__ = ["Key", "SCHEMA", "defaults"]

# One configuration key: its Python type, default and a one-line description; optional
# says None is a valid value; minimum bounds an int; check(value) returns what is wrong with
# a value of the right type (each item of a list), or None. (A namedtuple, not a dataclass:
# celery-submit's start-up time pays for every import.)
Key = namedtuple("Key", "type default description optional minimum check",
                 defaults=(False, None, None))

# Words systemd's IPAddressAllow= takes besides addresses and networks.
ADDRESS_WORDS = ("any", "localhost", "link-local", "multicast")
SIZE = r"(?:[0-9]+(?:\.[0-9]+)?[KMGT]?|[0-9]+(?:\.[0-9]+)?%|infinity)"


def check_address(value):
    """An IPAddressAllow= entry: an address, a network in CIDR form, or one of ADDRESS_WORDS."""
    if value in ADDRESS_WORDS:
        return None
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return (f"{value!r} is not an address, a network (10.0.0.0/8) or one of "
                f"{', '.join(ADDRESS_WORDS)} (systemd filters by address, not by host name)")
    return None


def check_size(value):
    """A systemd memory size: bytes with an optional K, M, G or T suffix, a percentage of RAM,
    or infinity."""
    import re

    if re.fullmatch(SIZE, value):
        return None
    return f"{value!r} is not a size like 512M, 2G, 80% or infinity"


def check_absolute(value):
    return None if value.startswith("/") else f"{value!r} is not an absolute path"


def split_listen(value):
    """Given HOST:PORT ([::1]:PORT for IPv6), return (host, port); raise ValueError."""
    host, colon, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    elif ":" in host:  # an IPv6 address needs its brackets: [::1]:9808
        raise ValueError(value)
    if not colon or not host.strip() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(value)
    return host, int(port)


def check_listen(value):
    """A metrics.listen value: HOST:PORT."""
    try:
        split_listen(value)
    except ValueError:
        return (f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:9808, 0.0.0.0:9808 or "
                f"[::1]:9808 (port 1-65535)")
    return None


def split_host(value):
    """Given HOST, HOST:PORT or [IPv6]:PORT (a broker.hosts entry), return (host, port or
    None); raise ValueError."""
    if value.startswith("["):
        host, bracket, after = value[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(value)
        port = after[1:] if after else None
    else:
        host, colon, port = value.partition(":")
        port = port if colon else None
    if not host or not all(c.isalnum() or c in ".-_:" for c in host):
        raise ValueError(value)
    if port is None:
        return host.lower(), None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(value)
    return host.lower(), int(port)


def check_host(value):
    """A broker.hosts entry: HOST or HOST:PORT."""
    try:
        split_host(value)
    except ValueError:
        return (f"{value!r} is not HOST or HOST:PORT, e.g. rabbit-b.example.org or "
                f"10.0.0.2:5671 ([::1]:5671 for IPv6; port 1-65535)")
    return None


RESULT_BACKENDS = ("rpc", "redis")


def check_backend(value):
    """A results.backend value: one of RESULT_BACKENDS."""
    return None if value in RESULT_BACKENDS else (
        f"{value!r} is not one of {', '.join(RESULT_BACKENDS)}")


def check_timezone(value):
    """A beat.timezone value: a name of the tz database."""
    from celeryd_pkg.slots import check_timezone

    return check_timezone(value)


SCHEMA = {
    "broker": {
        "host": Key(str, "localhost", "RabbitMQ host name or address."),
        "hosts": Key(
            list, [], "The nodes of a RabbitMQ cluster (HOST or HOST:PORT), tried in order when "
            "one is down; when set it replaces broker.host. Two or more make the task queues "
            "quorum queues (Debian 13; Celery 5.2 of Debian 12 cannot consume them).",
            check=check_host,
        ),
        "port": Key(
            int, None, "RabbitMQ port (default 5671 with TLS, 5672 without).", optional=True,
            minimum=1,
        ),
        "vhost": Key(str, "celery", "RabbitMQ virtual host."),
        "user": Key(str, "celery", "RabbitMQ user."),
        "password": Key(
            str, None, "RabbitMQ password; belongs in /etc/celeryd/credentials.", optional=True
        ),
        "connect_timeout": Key(
            int, 4, "Seconds to wait for a TCP connection to the broker.", minimum=1
        ),
        "heartbeat": Key(int, 60, "AMQP heartbeat in seconds (0 disables).", minimum=0),
        "tls": Key(bool, False, "Connect with TLS (amqps); `celeryd-admin join amqps://...` "
                               "sets it, with ca_file and port, in the credentials file."),
        "ca_file": Key(
            str, None, "CA certificate(s) to verify the broker with (default: the system's).",
            optional=True,
        ),
        "cert_file": Key(str, None, "Client certificate for TLS, if the broker asks for one (set key_file too).",
                         optional=True),
        "key_file": Key(str, None, "Private key of cert_file (set both or neither).", optional=True),
        "verify": Key(bool, True, "Verify the broker's TLS certificate and host name (leave this on)."),
        "server_name": Key(
            str, None, "Name expected in the broker's certificate (default: broker.host).",
            optional=True,
        ),
        "allow_plain": Key(
            bool, False, "Use plain AMQP to a broker on another host without the warning printed at every "
            "start (only on a network you trust).",
        ),
    },
    "worker": {
        "concurrency": Key(int, 2, "Number of prefork child processes.", minimum=1),
        "queues": Key(list, ["celery"], "Queues this worker consumes from."),
        "prefetch_multiplier": Key(
            int, 1, "Messages reserved per child. 1 keeps the tasks a broker outage runs twice "
            "to those in flight; more drains faster, but the reserved ones run on and may run "
            "twice too.", minimum=1,
        ),
        "name": Key(
            str, None, "Node name (default celery@HOSTNAME, or NAME@HOSTNAME for an instance).",
            optional=True,
        ),
        "loglevel": Key(str, "info", "Log level: debug, info, warning, error or critical."),
        "log_tasks": Key(
            bool, True, "Log each task received and succeeded at info (Celery's lines); false "
            "drains about 10 % faster. Failures are logged either way.",
        ),
        "send_events": Key(
            bool, False, "Send Celery's task events and worker heartbeats, for Flower and "
            "`celery events`; they cost throughput (measured by make bench).",
        ),
        "broker_lost_grace": Key(
            int, 300,
            "Seconds without a broker after which watchdog pings stop, so systemd restarts us.",
            minimum=0,
        ),
        "outbound": Key(
            list, [], "Where tasks may connect besides localhost and the broker: addresses, networks "
            "(10.0.0.0/8) or [any]. Both worker units get it at `systemctl daemon-reload` "
            "(restart them after).", check=check_address,
        ),
        "max_memory_per_child": Key(
            int, None, "KiB of resident memory after which a child is replaced, once its task ends "
            "(Celery's worker_max_memory_per_child; unset: never).", optional=True, minimum=1,
        ),
        "memory_high": Key(
            str, None, "Memory use above which systemd throttles the worker (MemoryHigh=, e.g. 1G "
            "or 80%; applied like outbound).", optional=True, check=check_size,
        ),
        "memory_max": Key(
            str, None, "Hard memory limit of the worker (MemoryMax=): the kernel kills the largest "
            "child, the worker stays up (applied like outbound).", optional=True, check=check_size,
        ),
    },
    "tasks": {
        "modules": Key(list, [], "Your task modules, imported at start, e.g. [myapp.tasks]."),
        "pythonpath": Key(list, [], "Directories prepended to sys.path to find them, e.g. [/srv/myapp]."),
        "time_limit": Key(
            int, None, "Hard time limit per task in seconds (unset: none).", optional=True,
            minimum=1,
        ),
        "virtualenv": Key(
            str, None, "A venv made with `python3 -m venv --system-site-packages` holding your "
            "tasks' own dependencies (e.g. /opt/myapp/venv).", optional=True, check=check_absolute,
        ),
        "max_redeliveries": Key(
            int, 3, "Deliveries of a task whose child process dies (OOM, crash) before it is moved "
            "to the queue celeryd.dead.", minimum=1,
        ),
    },
    "results": {
        "backend": Key(
            str, "rpc", "Where results go: rpc (straight back to the waiting client, nothing "
            "stored) or redis (kept results.expires seconds, so `celery-submit result ID` finds "
            "them later, from any client host).", check=check_backend,
        ),
        "expires": Key(int, 86400, "Seconds a result is kept for the client.", minimum=1),
        "host": Key(str, None, "Result store (redis-server) host (default: broker.host).",
                    optional=True),
        "port": Key(int, None, "Result store port (default 6380 with TLS, 6379 without).",
                    optional=True, minimum=1),
        "db": Key(int, 0, "Redis database number of the results.", minimum=0),
        "tls": Key(bool, None, "Connect to the store with TLS, verified with broker.ca_file "
                   "and broker.verify (default: broker.tls).", optional=True),
        "user": Key(str, None, "Result store (Redis ACL) user; belongs in "
                    "/etc/celeryd/credentials.", optional=True),
        "password": Key(str, None, "Result store password; belongs in /etc/celeryd/credentials.",
                        optional=True),
    },
    "client": {
        "timeout": Key(int, 30, "Seconds celery-submit waits for a result.", minimum=0),
        "queue": Key(str, "celery", "Queue celery-submit sends to by default."),
    },
    "beat": {
        "entries": Key(
            dict, {}, "Periodic tasks, by name: task, args, kwargs, queue and every: SECONDS or "
            "cron: \"m h dom mon dow\" (Celery's crontab). celery-beat.service sends them, "
            "one host in the fleet at a time; a later file replaces an entry of the same name, "
            "NAME: null removes it.",
        ),
        "timezone": Key(str, "UTC", "Time zone of the cron entries (every: counts from "
                        "00:00 UTC).", check=check_timezone),
        "heartbeat": Key(
            int, 5, "AMQP heartbeat of the scheduler's connection in seconds: a leader that "
            "stops answering (paused, cut off) loses the lead to a standby within 3 times "
            "this and a second; one that stops or crashes, within a second.", minimum=2,
        ),
    },
    "metrics": {
        "enabled": Key(bool, False, "Serve Prometheus metrics (celery-exporter's names) at "
                       "http://LISTEN/metrics from each worker."),
        "listen": Key(
            str, "127.0.0.1:9808", "HOST:PORT the metrics are served on; a second worker on "
            "the host (celery-worker@NAME) needs its own port, a remote Prometheus's address "
            "goes in worker.outbound.", check=check_listen,
        ),
    },
}


def defaults():
    """Return a fresh nested dict of every key's built-in default."""
    return {
        section: {name: (key.type(key.default) if key.type in (list, dict) else key.default)
                  for name, key in keys.items()}
        for section, keys in SCHEMA.items()
    }
