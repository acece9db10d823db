"""The result store's accounts: Redis ACL rules per role, the ACL file, redis-server's drop-in.

Debian's redis-server keeps results (results.backend: redis). Each host gets one ACL user, named
like its broker account, with the least its role needs: a worker stores results, a client only
reads them. The ACL file holds password hashes only; the admin (Redis's `default` user) has a
password that lives in a root-only file. redis.conf is Debian's conffile and stays as shipped:
a systemd drop-in passes our options on redis-server's command line instead.
"""

import hashlib
from pathlib import Path

from celeryd_pkg import files
from celeryd_pkg.admin.rabbitmqctl import check_name
from celeryd_pkg.errors import ConfigError, UsageError

__all__ = ["ACL_DIR", "ACLFILE", "ADMIN_PASSWORD_FILE", "DROPIN", "REDIS_CONF", "REDIS_SERVER",
           "ACLFILE_MODE", "ADMIN_PASSWORD_MODE", "DROPIN_MODE", "REDIS_GROUP", "PORT",
           "TLS_PORT", "ADMIN", "ROLES", "rules", "password_hash", "acl_line",
           "render_aclfile", "parse_aclfile", "update_aclfile", "render_dropin", "TlsFiles",
           "parse_version", "redis_gid", "write_aclfile", "write_admin_password",
           "read_admin_password", "write_dropin", "Layout"]

ACL_DIR = Path("/etc/celeryd/redis")
ACLFILE = ACL_DIR / "users.acl"
ADMIN_PASSWORD_FILE = ACL_DIR / "admin-password"
DROPIN = Path("/etc/systemd/system/redis-server.service.d/celeryd.conf")
REDIS_CONF = Path("/etc/redis/redis.conf")
REDIS_SERVER = "/usr/bin/redis-server"
# root:redis 0640: redis-server (User/Group=redis, PrivateUsers= maps that group, and
# ProtectSystem=strict leaves /etc readable) reads it; nobody else does.
ACLFILE_MODE = 0o640
# root:root 0600: only celeryd-admin (root) logs in as the admin.
ADMIN_PASSWORD_MODE = 0o600
DROPIN_MODE = 0o644
REDIS_GROUP = "redis"
PORT, TLS_PORT = 6379, 6380
ADMIN = "default"

RESULTS, GROUPS, CHORDS = "celery-task-meta-*", "celery-taskset-meta-*", "chord-unlock-*"

# Each command a role may send, with why Celery (5.2 and 5.5, celery/backends/redis.py) or
# redis-py sends it. AUTH and HELLO need no rule: Redis allows them to every user. Not here:
# DISCARD, INCR, DECR, PSETEX (never sent: redis-py's incr() is INCRBY).
READ_COMMANDS = (
    ("get", "a result by id: AsyncResult.get() and .state"),
    ("mget", "the result consumer re-reads every id it waits for after a reconnect"),
    ("subscribe", "wait for a result: Celery publishes it on the channel named like its key"),
    ("unsubscribe", "stop waiting for a result"),
    ("ping", "redis-py's health check (redis_backend_health_check_interval)"),
    ("select", "redis-py selects results.db on connect when it is not 0"),
    ("client|setname", "redis-py names its connection when given a client_name"),
)
WRITE_COMMANDS = (
    ("setex", "store a result that expires after result_expires (the usual case)"),
    ("set", "store a result when result_expires is off, and a chord's size"),
    ("publish", "tell waiting clients a result is stored"),
    ("del", "forget a result; drop a finished chord's counters"),
    ("expire", "chord counters expire like results"),
    ("multi", "a result is stored and published in one transaction (redis-py pipeline)"),
    ("exec", "commits that transaction"),
    ("incrby", "chord counters (redis-py's incr() sends INCRBY)"),
    ("zadd", "a chord part's result, ordered (result_chord_ordered, Celery's default)"),
    ("zcount", "how many chord parts are done (ordered)"),
    ("zrange", "a finished chord's results (ordered)"),
    ("rpush", "a chord part's result (result_chord_ordered off)"),
    ("llen", "how many chord parts are done (unordered)"),
    ("lrange", "a finished chord's results (unordered)"),
)
# redis-py >= 5 (Debian 13) sends CLIENT SETINFO on connect and ignores a refusal; Redis 7.0
# (Debian 12) does not know it and refuses to load an ACL file that names it.
SETINFO, SETINFO_SINCE = ("client|setinfo", "redis-py >= 5 labels its connection"), (7, 2)

# Keys first reset (an ACL file line starts from nothing, but ACL SETUSER would add): a worker
# writes results, group results and chord counters, and publishes each stored value on the
# channel named like its key (a chord's size too); a client reads results only (%R~).
ROLES = {
    "worker": (("resetkeys", "resetchannels", f"~{RESULTS}", f"~{GROUPS}", f"~{CHORDS}",
                f"&{RESULTS}", f"&{GROUPS}"), READ_COMMANDS + WRITE_COMMANDS),
    "client": (("resetkeys", "resetchannels", f"%R~{RESULTS}", f"&{RESULTS}"), READ_COMMANDS),
}
ADMIN_RULES = ("~*", "&*", "+@all")
KNOWN_VERSIONS = ((7, 0), SETINFO_SINCE)


def rules(role, version=None):
    """Return the ACL rules of role ("worker" or "client") as a tuple of tokens, for the
    redis-server version (major, minor) given; None: the oldest one we support (7.0)."""
    try:
        patterns, commands = ROLES[role]
    except KeyError:
        raise UsageError(f"celeryd-admin: role {role!r}: expected one of "
                         f"{', '.join(sorted(ROLES))}") from None
    if (version or (7, 0)) >= SETINFO_SINCE:
        commands = commands + (SETINFO,)
    return patterns + ("-@all",) + tuple(f"+{name}" for name, _ in commands)


def password_hash(password):
    """Return the SHA-256 hex digest Redis stores for password (`#<hash>` in an ACL file)."""
    if not password:
        raise UsageError("celeryd-admin: empty result store password")
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def _check_user(user):
    check_name("result store user", user)
    if user == ADMIN:
        raise UsageError(f"celeryd-admin: result store user {ADMIN!r}: that is the admin")
    return user


def _line(user, digest, tokens):
    return " ".join(("user", user, "on", f"#{digest}", *tokens))


def acl_line(user, password, role, version=None):
    """Return the ACL file line of user with password (stored as its hash only) and role."""
    return _line(_check_user(user), password_hash(password), rules(role, version))


def render_aclfile(accounts, admin_password, version=None, others=()):
    """Return the whole ACL file: the admin (default user, all rights), then one line per
    account of accounts {user: (password hash, role)}, sorted by user, then others (lines
    of users celeryd did not make, kept as they were)."""
    lines = [_line(ADMIN, password_hash(admin_password), ADMIN_RULES)]
    for user in sorted(accounts):
        digest, role = accounts[user]
        lines.append(_line(_check_user(user), _check_hash(digest), rules(role, version)))
    return "\n".join([*lines, *others]) + "\n"


def _check_hash(digest):
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"celeryd-admin: {digest[:8]!r}...: not a SHA-256 password hash")
    return digest


def parse_aclfile(text, path=ACLFILE):
    """Read an ACL file celeryd wrote: return (accounts {user: (hash, role)}, the admin's
    hash or None, other lines). A line whose rules match no role (of any redis-server
    version) is another line, kept as it is; the admin's line is always written anew; a
    clear-text password or a line that is not a user's is refused, naming path."""
    accounts, admin, others = {}, None, []
    variants = {rules(role, version): role for role in ROLES for version in KNOWN_VERSIONS}
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if (len(tokens) < 2 or tokens[0] != "user"
                or any(token.startswith((">", "<")) for token in tokens)):
            raise ConfigError(f"celeryd-admin: {path} line {number}: expected `user NAME on "
                              f"#HASH RULES...` (never a clear-text password)")
        user, hashes = tokens[1], [token[1:] for token in tokens if token.startswith("#")]
        if user == ADMIN:
            admin = hashes[0] if len(hashes) == 1 else None
        elif len(hashes) == 1 and tokens[2:4] == ["on", f"#{hashes[0]}"] and (
                tuple(tokens[4:]) in variants):
            accounts[user] = (hashes[0], variants[tuple(tokens[4:])])
        else:
            others.append(line)
    return accounts, admin, others


def update_aclfile(text, admin_password, user, password=None, role="worker", version=None,
                   path=ACLFILE):
    """Return the ACL file text (the old one, text, or "" for none) with user added or given
    a new password (password given), or removed (password None); every other line kept."""
    accounts, _, others = parse_aclfile(text, path)
    _check_user(user)
    rules(role)  # an unknown role is refused before anything changes
    if password is None:
        accounts.pop(user, None)
    else:
        accounts[user] = (password_hash(password), role)
    # A hand-made line for the same user would make Redis refuse the whole file.
    others = [line for line in others if line.split()[1:2] != [user]]
    return render_aclfile(accounts, admin_password, version, others)


class Layout:
    """Where store-setup reads and writes, beside the config file: the defaults (ACL_DIR,
    tls-setup's CA, /etc/rabbitmq/tls, conf.d/20-results.yaml) or a test's directory."""

    def __init__(self, config_file=None, rabbitmq_dir="/etc/rabbitmq", dropin=DROPIN,
                 redis_group=REDIS_GROUP):
        from celeryd_pkg import config
        from celeryd_pkg.admin import tls

        main, conf_d, self.credentials, _ = config.config_paths(config_file)
        self.conf_d_file = conf_d / "20-results.yaml"
        self.ca = tls.ca_files(main.parent)
        self.acl_dir = main.parent / ACL_DIR.name
        self.aclfile = self.acl_dir / ACLFILE.name
        self.admin_password = self.acl_dir / ADMIN_PASSWORD_FILE.name
        # redis (group redis) cannot read RabbitMQ's key: the store gets its own copy.
        self.tls_cert, self.tls_key = self.acl_dir / "server.pem", self.acl_dir / "server.key"
        self.broker_tls = Path(rabbitmq_dir) / "tls"
        self.dropin, self.redis_group = Path(dropin), redis_group

    def tls_files(self):
        """The store's TLS files (a TlsFiles) and their contents {path: bytes}, or (None, {})
        without tls-setup's CA: a copy of the broker's certificate and key, for group redis."""
        if not self.ca.exists():
            return None, {}
        try:
            cert, key = ((self.broker_tls / name).read_bytes()
                         for name in ("server.pem", "server.key"))
        except OSError as error:
            raise ConfigError(f"celeryd-admin: {self.ca.cert} exists but {error.filename} "
                              f"cannot be read ({error.strerror}): run celeryd-admin tls-setup "
                              f"again, or pass --rabbitmq-dir") from None
        tls = TlsFiles(self.tls_cert, self.tls_key, self.ca.cert)
        return tls, {self.tls_cert: cert, self.tls_key: key}


class TlsFiles:
    """The files redis-server's TLS listener uses; cert and key readable by group redis."""

    def __init__(self, cert, key, ca):
        self.cert, self.key, self.ca = Path(cert), Path(key), Path(ca)


# Debian's ExecStart (redis-server.service, bookworm and trixie), kept as is with our options
# after it: on redis-server's command line a later option wins over the config file.
DEBIAN_EXECSTART = f"{REDIS_SERVER} {REDIS_CONF} --supervised systemd --daemonize no"


def render_dropin(tls=None, aclfile=ACLFILE):
    """Return the text of redis-server.service.d/celeryd.conf: our ACL file; every interface
    (`bind * -::*`: the default user has a password, so protected mode lets remote logins
    through, and each account has its own); results kept across restarts (appendonly). With
    tls (a TlsFiles): TLS on TLS_PORT too, server certificate only (accounts log in by
    password). The plain PORT stays open, as RabbitMQ's 5672 does after tls-setup: this
    host's worker reaches the store as it reaches the broker, on localhost without TLS
    (results.tls follows broker.tls), and Redis has one bind for both ports."""
    options = [f"--aclfile {aclfile}", "--bind * -::*", "--appendonly yes"]
    if tls is not None:
        options += [f"--port {PORT} --tls-port {TLS_PORT}", f"--tls-cert-file {tls.cert}",
                    f"--tls-key-file {tls.key}", f"--tls-ca-cert-file {tls.ca}",
                    "--tls-auth-clients no"]
    return ("# Written by celeryd-admin: Redis as celeryd's result store (results.backend:\n"
            "# redis). Options over Debian's /etc/redis/redis.conf, which stays as shipped.\n"
            "[Service]\n"
            "ExecStart=\n"
            f"ExecStart={DEBIAN_EXECSTART} {' '.join(options)}\n")


def parse_version(text):
    """Return (major, minor) from `redis-server --version` output ("Redis server v=7.0.15 ...")
    or None when it says no version."""
    for word in text.split():
        if word.startswith("v="):
            parts = word[2:].split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return int(parts[0]), int(parts[1])
    return None


def redis_gid(group):
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"celeryd-admin: no group {group!r}: install redis-server "
                          f"first") from None


def write_aclfile(text, path=ACLFILE, group=REDIS_GROUP):
    """Write the ACL file atomically, root:group 0640."""
    files.replace(path, text, mode=ACLFILE_MODE, gid=redis_gid(group))


def write_admin_password(password, path=ADMIN_PASSWORD_FILE):
    """Write the admin password atomically, root:root 0600 (one line)."""
    files.replace(path, password + "\n", mode=ADMIN_PASSWORD_MODE, gid=0)


def read_admin_password(path=ADMIN_PASSWORD_FILE):
    """Return the admin password, or None when the file does not exist yet."""
    try:
        return Path(path).read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"celeryd-admin: cannot read {path} ({error.strerror}); run as "
                          f"root") from None


def write_dropin(text, path=DROPIN):
    """Write the drop-in atomically, root:root 0644 (then: systemctl daemon-reload)."""
    files.replace(path, text, mode=DROPIN_MODE, gid=0)
