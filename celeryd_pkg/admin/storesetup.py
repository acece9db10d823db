"""celeryd-admin store-setup: Debian's redis-server as celeryd's result store, in one command.

On the host that runs redis-server, as tls-setup and provision do for the broker: the ACL file
with this host's account, TLS when tls-setup made a CA, the drop-in, a restart; then this host's
login in the credentials file and results.backend: redis in conf.d. Idempotent; --remove undoes
it. Passwords go through files and redis-py only, never argv, the environment or output.
"""

import contextlib
import os
import subprocess
import time
from pathlib import Path

from celeryd_pkg import account, config, files
from celeryd_pkg.admin import store, systemctl
from celeryd_pkg.admin.cli import Command, config_option, group_option
from celeryd_pkg.errors import AccessRefused, BrokerUnreachable, ConfigError

__all__ = ["RedisServer", "translate", "sets_redis", "setup", "remove", "keep_existing_data", "summary", "COMMANDS"]

PROG = "celeryd-admin"
UNIT, WORKER_UNIT = "redis-server", "celery-worker"
CONF_D_TEXT = ("# Written by celeryd-admin store-setup (store-setup --remove deletes it): this\n"
               "# host's workers and clients store and read results in the result store.\n"
               "# Set results.expires and the like in a file of your own beside it.\n"
               "results:\n  backend: redis\n")
LOOPBACK = "127.0.0.1"
REWRITE_TIMEOUT = 600  # seconds for the append-only file's first rewrite (a large dataset)


class RedisServer:
    """Debian's redis-server here: its unit through systemctl, a login to it on loopback."""

    def __init__(self, binary=store.REDIS_SERVER):
        self.binary = binary

    def installed(self):
        return Path(self.binary).exists()

    def version(self):
        result = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                timeout=30, stdin=subprocess.DEVNULL)
        return store.parse_version(result.stdout)

    def active(self):
        return systemctl.is_active(UNIT)

    def restart(self, unit=UNIT):
        """Restart (or start) unit; raise BrokerUnreachable naming its journal if it fails."""
        if not systemctl.restart(unit):
            raise BrokerUnreachable(f"{PROG}: {unit} did not (re)start: journalctl -u {unit}")

    def daemon_reload(self):
        systemctl.daemon_reload()

    def worker_active(self):
        return systemctl.is_active(WORKER_UNIT)

    def login(self, user, password):
        """Return a redis-py client logged in as user on loopback's plain port (always open:
        the local worker uses it), after one PING."""
        import redis

        client = redis.Redis(host=LOOPBACK, port=store.PORT, username=user, password=password,
                             socket_connect_timeout=10, socket_timeout=60,
                             decode_responses=True)
        try:
            client.ping()
        except Exception as error:  # noqa: BLE001 - one line, never a traceback
            client.close()
            raise translate(error, user) from None
        return client


def translate(error, user):
    """The CelerydError (one line, exit 4 or 5) of a redis-py error; no secret in it."""
    text, where = str(error).rstrip(".") or type(error).__name__, f"{LOOPBACK}:{store.PORT}"
    if type(error).__name__ in ("AuthenticationError", "NoPermissionError") or text.split(
            " ")[0] in ("WRONGPASS", "NOAUTH", "NOPERM"):
        hint = (f"does {store.ADMIN_PASSWORD_FILE} hold this server's admin password?"
                if user == store.ADMIN else f"journalctl -u {UNIT}")
        return AccessRefused(f"{PROG}: redis-server at {where} refused user '{user}' ({text}): "
                             f"{hint}")
    return BrokerUnreachable(f"{PROG}: cannot talk to redis-server at {where} ({text}): "
                             f"journalctl -u {UNIT}")


def keep_existing_data(client, timeout=REWRITE_TIMEOUT):
    """When the running server holds data and its append-only file is off, turn it on and wait
    for the first rewrite; return whether it did. Restarted with appendonly yes but no such
    file yet, Redis 7.0 starts empty and ignores dump.rdb (measured)."""
    try:
        if client.config_get("appendonly").get("appendonly") == "yes":
            return False
        if not client.info("keyspace"):
            return False  # nothing to lose
        client.config_set("appendonly", "yes")
        deadline = time.monotonic() + timeout
        persistence = client.info("persistence")
        while (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]
               ) and time.monotonic() < deadline:
            time.sleep(0.2)
            persistence = client.info("persistence")
    except Exception as error:  # noqa: BLE001 - one line, never a traceback
        raise translate(error, store.ADMIN) from None
    status = persistence.get("aof_last_bgrewrite_status")
    if persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"] or (
            status != "ok"):
        raise ConfigError(f"{PROG}: redis-server did not write its append-only file within "
                          f"{timeout}s (aof_last_bgrewrite_status: {status}); nothing changed: "
                          f"run this again once INFO persistence says aof_rewrite_in_progress:0")
    return True


def _same(path, data):
    """Whether path holds exactly data (text or bytes)."""
    try:
        return Path(path).read_bytes() == (data.encode() if isinstance(data, str) else data)
    except FileNotFoundError:
        return False


def _replace_if_changed(path, data, **options):
    """Write data to path unless it already holds exactly that; return whether it wrote."""
    if _same(path, data):
        return False
    files.replace(path, data, PROG, **options)
    return True


def setup(layout, server, user, gid, version=None):
    """Make redis-server this host's result store and give this host (user, role worker) its
    login. Return the list of changes (empty: everything was in place already)."""
    from celeryd_pkg.admin.provision import new_password

    changes = []
    admin = store.read_admin_password(layout.admin_password)
    if admin is None:
        admin = new_password()
        store.write_admin_password(admin, layout.admin_password)
        changes.append(f"wrote {layout.admin_password}")
    with account.locked(layout.credentials):
        broker = account.load(layout.credentials)
        old_login = account.load_results(layout.credentials)
        password = old_login.get("password") if old_login.get("user") == user else None
        login = {"user": user, "password": password or new_password()}
        # The new login goes to the credentials file only once the server has it.
        new_login = login != old_login
        staged = (account.staged(layout.credentials, broker, gid, results=login)
                  if new_login else contextlib.nullcontext())
        with staged:
            tls, tls_files = layout.tls_files()
            old_acl = layout.aclfile.read_text() if layout.aclfile.exists() else ""
            acl = store.update_aclfile(old_acl, admin, user, login["password"], "worker",
                                       version, layout.aclfile)
            dropin = store.render_dropin(tls, layout.aclfile)
            if not (acl == old_acl and _same(layout.dropin, dropin)
                    and all(_same(path, data) for path, data in tls_files.items())):
                _keep_data_before_restart(layout, server, admin)
                _write_server_files(layout, server, acl, dropin, tls_files, changes)
                server.login(user, login["password"]).close()  # proves the new account
        if new_login:
            changes.append(f"wrote the login of user '{user}' to {layout.credentials}")
    wrote_conf = not sets_redis(layout.conf_d_file) and _replace_if_changed(
        layout.conf_d_file, CONF_D_TEXT, mode=0o644)
    if wrote_conf:
        changes.append(f"wrote {layout.conf_d_file}")
    if (new_login or wrote_conf) and server.worker_active():
        server.restart(WORKER_UNIT)  # it reads results.* and its login at start only
        changes.append(f"restarted {WORKER_UNIT}")
    return changes


def sets_redis(path):
    """Whether path, written by hand maybe (with results.expires), sets backend: redis."""
    import yaml

    try:
        results = (yaml.safe_load(Path(path).read_text()) or {}).get("results")
    except (OSError, AttributeError, yaml.YAMLError):
        return False
    return isinstance(results, dict) and results.get("backend") == "redis"


def _keep_data_before_restart(layout, server, admin):
    """Before redis-server restarts with appendonly yes, save what it holds into the
    append-only file. A stopped server that never ran our drop-in is started on its own
    config first: its dump.rdb would be ignored otherwise."""
    if not server.active():
        if layout.dropin.exists():
            return  # it ran with our drop-in, appendonly on
        server.restart()
    # Debian's default user has no password (any is taken); ours has the admin's.
    client = server.login(store.ADMIN, admin)
    try:
        keep_existing_data(client)
    finally:
        client.close()


def _write_server_files(layout, server, acl, dropin, tls_files, changes):
    """Write what redis-server reads at start (the ACL file last but the drop-in: each file
    the drop-in names exists before it does), then restart it."""
    gid = store.redis_gid(layout.redis_group)
    for path, data in tls_files.items():
        if _replace_if_changed(path, data, mode=store.ACLFILE_MODE, gid=gid):
            changes.append(f"wrote {path}")
    if _replace_if_changed(layout.aclfile, acl, mode=store.ACLFILE_MODE, gid=gid):
        changes.append(f"wrote {layout.aclfile}")
    if _replace_if_changed(layout.dropin, dropin, mode=store.DROPIN_MODE, gid=0):
        changes.append(f"wrote {layout.dropin}")
        server.daemon_reload()
    server.restart()
    changes.append(f"restarted {UNIT}")


def remove(layout, server, gid):
    """Undo setup: redis-server back on its own config (restarted if it runs), then our files
    and this host's store login gone. Return the list of changes (empty: nothing was left)."""
    changes = []
    if files.remove(layout.dropin, PROG):
        with contextlib.suppress(OSError):
            layout.dropin.parent.rmdir()  # only when empty: an operator's drop-ins stay
        changes.append(f"removed {layout.dropin}")
        server.daemon_reload()
        # Before the files it names go: restarted later, it would refuse to start.
        if server.active():
            server.restart()
            changes.append(f"restarted {UNIT} on its own config")
    for path in (layout.aclfile, layout.admin_password, layout.tls_cert, layout.tls_key):
        if files.remove(path, PROG):
            changes.append(f"removed {path}")
    with contextlib.suppress(OSError):
        layout.acl_dir.rmdir()
    client_changed = False
    with account.locked(layout.credentials):
        if account.load_results(layout.credentials):
            account.save(layout.credentials, account.load(layout.credentials), gid)
            changes.append(f"removed the result store login from {layout.credentials}")
            client_changed = True
    if files.remove(layout.conf_d_file, PROG):
        changes.append(f"removed {layout.conf_d_file}")
        client_changed = True
    if client_changed and server.worker_active():
        server.restart(WORKER_UNIT)
        changes.append(f"restarted {WORKER_UNIT}")
    return changes


def summary(changes, removing, user=None, tls=False):
    """The one line store-setup prints."""
    if removing:
        return (f"celeryd-admin: result store removed: {'; '.join(changes)}" if changes else
                "celeryd-admin: no result store set up here; nothing changed")
    where = f"redis-server port {store.PORT}" + (f" and TLS port {store.TLS_PORT}" if tls else "")
    if not changes:
        return (f"celeryd-admin: result store already set up ({where}, account '{user}'); "
                f"nothing changed")
    return f"celeryd-admin: result store ready ({where}, account '{user}'): {'; '.join(changes)}"


def action_store_setup(args):
    if os.geteuid() != 0:
        raise ConfigError(f"{PROG}: run as root (it writes /etc/celeryd and restarts "
                          f"{UNIT})")
    layout, server = store.Layout(args.config, args.rabbitmq_dir), RedisServer()
    gid = account.resolve_group(args.group)
    if args.remove:
        print(summary(remove(layout, server, gid), True), flush=True)
        return 0
    if not server.installed():
        raise ConfigError(f"{PROG}: {server.binary} not found: apt install redis-server, "
                          f"then run this again")
    user = config.load(args.config).broker.user
    changes = setup(layout, server, user, gid, server.version())
    print(summary(changes, False, user, layout.ca.exists()), flush=True)
    return 0


def _arguments(parser):
    parser.add_argument("--remove", action="store_true",
                        help="take the result store away again: redis-server back on its own "
                             "config, the accounts, this host's login and 20-results.yaml gone")
    parser.add_argument("--rabbitmq-dir", default="/etc/rabbitmq", metavar="DIR",
                        help="where tls-setup put the broker's certificate (default "
                             "/etc/rabbitmq), copied for redis-server when the CA exists")
    group_option(parser)
    config_option(parser)


COMMANDS = (
    Command("store-setup", "make this host's redis-server the result store (results.backend: "
                           "redis) with this host's account; TLS on port 6380 after tls-setup",
            action_store_setup, _arguments),
)
