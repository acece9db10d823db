"""The broker account: where the broker is and how to log in, as a URL and as the credentials file.

One owner for the keys the credentials file may hold, the port table, the account URL (masked
for display, or a join string carrying the broker's CA) and the file's reading and writing.
"""

import contextlib
import grp
import os

from celeryd_pkg import files, joinparts
from celeryd_pkg.errors import ConfigError, UsageError

__all__ = ["KEYS", "RESULTS_KEYS", "PORTS", "MODE", "default_port", "to_url", "from_url",
           "mask_url", "addresses", "netloc", "default_results_port", "to_results_url", "load",
           "load_results", "render", "save", "staged", "locked", "remove", "resolve_group"]

# The only keys the credentials file may set, in the order it is written: where the broker is
# and how to log in (the config loader accepts nothing else in that file).
KEYS = ("host", "port", "hosts", "vhost", "user", "password", "tls", "ca_file", "server_name",
        "allow_plain")
# Its `results:` section: the result store's login (Redis ACL user), nothing else.
RESULTS_KEYS = ("user", "password")
PORTS = {"amqp": 5672, "amqps": 5671}
RESULTS_PORTS = {"redis": 6379, "rediss": 6380}
# root:GROUP 0640: the workers (group celery) read the credentials, nobody else does.
MODE = 0o640
EXPECTED = ("expected amqps://USER:PASSWORD@HOST[:PORT][,HOST[:PORT]...]/VHOST[?ca=...] "
            "(or amqp://)")


def default_port(tls):
    """Return the broker port used when none is configured: AMQPS with TLS, else AMQP."""
    return PORTS["amqps" if tls else "amqp"]


def to_url(broker, masked=True, vhost=None, ca_file=None, results_password=None,
           cluster=None):
    """Given a broker mapping {host, port, vhost, user, password, tls}, return its AMQP URL (of
    another vhost if given). The password is '***' when masked; unmasked with ca_file, the URL
    is a join string carrying that CA certificate, with results_password the password of
    the same user in the result store (on the broker host), and with cluster what a new
    broker node needs to join the cluster (admin.cluster.bundle: cookie, node, certificate)."""
    from urllib.parse import quote  # here: celery-submit's start-up does without it

    vhost = broker["vhost"] if vhost is None else vhost
    password = broker.get("password") or ""
    secret = "***" if masked and password else quote(password, safe="")
    auth = quote(broker["user"], safe="") + (":" + secret if password else "")
    scheme = "amqps" if broker["tls"] else "amqp"
    nodes = ",".join(netloc(host, port) for host, port in addresses(broker))
    url = f"{scheme}://{auth}@{nodes}/{quote(vhost, safe='')}"
    query = ([f"ca={joinparts.encode_ca(ca_file)}"] if ca_file else []) + (
        [f"results={quote(results_password, safe='')}"] if results_password and not masked
        else []) + (
        [f"cluster={joinparts.encode_cluster(cluster)}"] if cluster and not masked else [])
    return f"{url}?{'&'.join(query)}" if query else url


def addresses(broker):
    """Given a broker mapping, return its nodes as [(host, port)]: broker.hosts in order
    (each port defaulting to broker.port, then to the scheme's), else broker.host alone."""
    from celeryd_pkg.schema import split_host

    port = broker.get("port") or default_port(broker["tls"])
    if not broker.get("hosts"):
        return [(broker["host"], port)]
    return [(host, own or port) for host, own in map(split_host, broker["hosts"])]


def netloc(host, port):
    """Return HOST:PORT, an IPv6 address in brackets: a URL's node, a broker.hosts entry."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_results_port(tls):
    """Return the result store's port used when none is configured: 6380 with TLS."""
    return RESULTS_PORTS["rediss" if tls else "redis"]


def to_results_url(results, masked=True):
    """Given the results mapping {host, port, db, tls, user, password}, return the store's
    redis[s]://USER:PASSWORD@HOST:PORT/DB URL, the password '***' when masked."""
    from urllib.parse import quote

    user, password = results.get("user") or "", results.get("password") or ""
    auth = ""
    if user or password:
        secret = "***" if masked and password else quote(password, safe="")
        auth = quote(user, safe="") + (":" + secret if password else "") + "@"
    scheme = "rediss" if results["tls"] else "redis"
    host = f"[{results['host']}]" if ":" in results["host"] else results["host"]
    port = results.get("port") or default_results_port(results["tls"])
    return f"{scheme}://{auth}{host}:{port}/{results.get('db') or 0}"


def mask_url(text):
    """Return text with everything between the user name and the last '@' replaced by ***;
    text that is not URL-shaped enough to tell where a secret is becomes '***'."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    userinfo, at, hostpart = rest.rpartition("@")
    prefix = f"{scheme}://" if sep else ""
    if not at:
        return f"{prefix}***" if ":" in rest or not sep else f"{prefix}{rest}"
    user = userinfo.partition(":")[0]
    return f"{prefix}{user}:***@{hostpart}" if ":" in userinfo else f"{prefix}{userinfo}@{hostpart}"


def from_url(text):
    """Given a join string amqp[s]://USER:PASSWORD@HOST[:PORT]/VHOST[?ca=CERT]
    (percent-encoded; CERT is the broker's CA certificate as base64url DER), return
    {host, port, vhost, user, password, tls} plus ca (PEM) when given, and hosts
    (HOST:PORT strings) when several nodes are named, comma-separated. Raise UsageError
    naming the wrong part, with the password masked."""
    from urllib.parse import unquote

    text = text.strip()
    if not text:
        raise UsageError(f"celeryd-admin join: no URL given: {EXPECTED}")
    shown = mask_url(text.split("?")[0])

    def bad(part, why):
        raise UsageError(f"celeryd-admin join: {part}: {why} in {shown}: {EXPECTED}")

    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        bad("URL", "whitespace or control characters")
    scheme, sep, rest = text.partition("://")
    if not sep:
        bad("scheme", "no 'amqps://'")
    scheme = scheme.lower()
    if scheme not in PORTS:
        bad("scheme", f"'{scheme}' is not amqps or amqp")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        bad("user", "no USER:PASSWORD@ part")
    user_text, colon, password_text = userinfo.partition(":")
    user, password = unquote(user_text), unquote(password_text)
    if not user or any(ord(c) < 32 for c in user):
        bad("user", "empty or invalid user name")
    if not colon or not password:
        bad("password", "no password")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        bad("password", "control characters")
    if "#" in hostpart:
        bad("URL", "a fragment (not supported)")
    hostpart, _, query = hostpart.partition("?")
    authority, slash, path = hostpart.partition("/")
    nodes = [_host_port(part, bad, PORTS[scheme]) for part in authority.split(",")]
    if len(set(nodes)) < len(nodes):
        bad("host", "a node named twice")
    host, port = nodes[0]
    if not slash or not path:
        bad("vhost", "no vhost (end the URL with /VHOST, e.g. /celery)")
    if "/" in path:
        bad("vhost", "a '/' inside the vhost (write it as %2F)")
    vhost = unquote(path)
    if any(ord(c) < 32 for c in vhost):
        bad("vhost", "control characters")
    broker = {"host": host, "port": port, "vhost": vhost, "user": user, "password": password,
              "tls": scheme == "amqps"}
    if len(nodes) > 1:  # a cluster: the credentials file keeps every node
        broker["hosts"] = [netloc(host, port) for host, port in nodes]
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        if name == "results":
            results_password = unquote(value)
            if not results_password or any(ord(c) < 32 or ord(c) == 127
                                            for c in results_password):
                bad("results", "an empty or invalid result store password")
            broker["results_password"] = results_password
            continue
        if name == "cluster":
            broker["cluster"] = joinparts.decode_cluster(value, bad)
            continue
        if name != "ca":
            bad("URL", f"an unknown parameter '{name}' (only ca=, results= and cluster=)")
        if scheme != "amqps":
            bad("ca", "a CA certificate with plain amqp:// (use amqps://)")
        try:
            broker["ca"] = joinparts.decode_ca(unquote(value))
        except ValueError:
            bad("ca", "not a certificate (copy the whole join string)")
    return broker


def _host_port(node, bad, default):
    from celeryd_pkg.schema import split_host

    try:
        host, port = split_host(node)
    except ValueError:
        bad("host", f"'{node}' is not HOST or HOST:PORT (an IPv6 address in [], port 1-65535)")
    return host, port or default


def load(path):
    """Given the credentials file path, return its broker mapping ({} if the file is missing).
    Raise ConfigError naming the file if it is unreadable or malformed (the config loader's
    own checks: one reader for the worker, the client and the admin)."""
    from celeryd_pkg.config import read_credentials

    return read_credentials(path)


def load_results(path):
    """Given the credentials file path, return its results mapping (user, password; {} if
    none), checked as load() checks the broker's. A rewrite of the file passes it to render()
    so the store's login survives a broker password rotation."""
    from celeryd_pkg.config import read_credentials

    return read_credentials(path, "results")


def render(broker, results=None):
    """Given a broker mapping (and the result store's login, if any), return the credentials
    file's text: comment lines, then JSON (which is YAML too, and which celery-submit reads
    without importing yaml), fixed key order."""
    import json

    body = {"broker": {key: broker[key] for key in KEYS if broker.get(key) is not None}}
    login = {key: results[key] for key in RESULTS_KEYS if (results or {}).get(key) is not None}
    if login:
        body["results"] = login
    return ("# Broker credentials for celeryd, written by celeryd-admin (root:celery 0640).\n"
            "# Not a conffile: celeryd-admin provision, join and rotate-password rewrite it.\n"
            "# JSON, which is YAML too: edit it as either.\n"
            + json.dumps(body, indent=2) + "\n")


def staged(path, broker, gid, results=None):
    """Stage broker (and results) as the new credentials file at path (root:gid 0640),
    renamed into place when the block succeeds (files.staged): act on the broker inside the
    block, so a failure leaves the old password and the old file as a matching pair."""
    return files.staged(path, render(broker, results), mode=MODE, gid=gid)


def save(path, broker, gid, results=None):
    """Atomically replace the credentials file at path with broker (and results), root:gid
    0640."""
    files.replace(path, render(broker, results), mode=MODE, gid=gid)


def remove(path):
    """Remove the credentials file; return whether it existed."""
    return files.remove(path)


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive lock on the credentials file's directory for a read-modify-write."""
    import fcntl
    from pathlib import Path

    directory = Path(path).parent
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise ConfigError(f"celeryd-admin: cannot open {directory} ({error.strerror}); "
                          f"run as root") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def resolve_group(name):
    """Given a group name, return its gid. Raise ConfigError if the group does not exist."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"celeryd-admin: group '{name}' does not exist: install the celeryd "
                          f"package or pass --group") from None
