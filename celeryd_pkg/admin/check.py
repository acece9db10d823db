"""celeryd-admin check: config, what tasks may reach, DNS, TCP, AMQP login, vhost, the result
store's login (with results.backend: redis), the beat leader (with beat.entries) and live
workers, one line each.

No task code is imported: the workers are named through the control-only app.
"""

import dataclasses
import os

from celeryd_pkg.admin import outbound, probe
from celeryd_pkg.admin.cli import Command, config_option
from celeryd_pkg.errors import CelerydError

__all__ = ["STEPS", "Result", "run", "diagnose", "COMMANDS"]

STEPS = ("config", "outbound", "dns", "tcp", "login", "vhost", "workers")
PING_TIMEOUT = 2.0


@dataclasses.dataclass
class Result:
    """The outcome of one step: OK, WARN (a hint, no failure), FAIL (a hint and an exit code)
    or SKIP."""

    status: str
    name: str
    detail: str
    hint: str = ""
    exit_code: int = 0

    def line(self):
        if self.status == "OK":
            return f"OK   {self.name}: {self.detail}"
        hint = f" — {self.hint}" if self.hint else ""
        return f"{self.status} {self.name}: {self.detail}{hint}"


class _Failed(Exception):
    """A step failed: carries its results (the last is the FAIL) to diagnose()."""

    def __init__(self, *results):
        super().__init__(results[-1].detail)
        self.results = results


def _fail(name, detail, hint, exit_code):
    return Result("FAIL", name, detail, hint, exit_code)


def diagnose(config_file=None, env=os.environ, ping_timeout=PING_TIMEOUT):
    """Given the config file (or None for the default) and environment, yield one Result per
    step in STEPS; after the first FAIL the remaining steps are SKIPs."""
    state = {"config_file": config_file, "env": env, "ping_timeout": ping_timeout}
    steps = [_config, _dns, _tcp, _login, _cluster, _store, _beat, _workers]
    done = []
    for step in steps:
        try:
            results = step(state)
        except _Failed as failed:
            results = failed.results
        for result in results:
            done.append(result.name)
            yield result
        if results and results[-1].status == "FAIL":
            break
    for name in _names(state):
        if name not in done:
            yield Result("SKIP", name, "not checked after the failure above")


def _names(state):
    """STEPS, with the result store's step before the workers' when results are stored."""
    settings = state.get("config")
    if settings is None or settings.results.backend != "redis":
        return STEPS
    return STEPS[:-1] + ("store",) + STEPS[-1:]


def run(config_file=None, env=os.environ, out=print, ping_timeout=PING_TIMEOUT):
    """Print every step's line with out; return 0 if all are OK, else the exit code of the
    first failure (3 config, 4 DNS/TCP/store unreachable, 5 login/vhost/store login refused,
    1 no live workers)."""
    code = 0
    for result in diagnose(config_file, env, ping_timeout):
        out(result.line())
        if result.status == "FAIL" and not code:
            code = result.exit_code
    return code


def _config(state):
    from celeryd_pkg import config

    path = config.config_paths(state["config_file"], state["env"])[0]
    try:
        settings = config.load(state["config_file"], env=state["env"])
    except CelerydError as error:
        lines = error.message.splitlines()
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise _Failed(_fail("config", lines[0] + more, f"fix {path}, then run this again",
                            error.exit_code)) from None
    state["config"] = settings
    sources = ", ".join(settings.sources) or f"built-in defaults only (no {path})"
    results = [Result("OK", "config", f"broker {settings.broker_url()} from {sources}")]
    shut_out = outbound.store_shut_out(settings) if outbound.worker_units_installed() else []
    if shut_out:
        host = settings.results.host
        raise _Failed(*results, _fail(
            "outbound", f"the worker may not reach the result store {host} "
            f"({', '.join(shut_out)}): not the broker, not in worker.outbound",
            f"add {' and '.join(shut_out)} to worker.outbound, then systemctl daemon-reload "
            f"and restart celery-worker", 3))
    results.append(Result("OK", "outbound", outbound.reach(settings)))
    memory = outbound.memory_limits(settings.worker)
    if memory:  # a line of its own only when set: not a step, never skipped
        results.append(Result("OK", "memory", memory))
    return results


def _dns(state):
    settings = state["config"]
    nodes, unresolved = probe.resolve(settings.broker_addresses())
    hint = (f"check broker.host{'s' if settings.is_cluster() else ''} in the config, or "
            f"/etc/hosts and the resolver")
    if not nodes:
        raise _Failed(_fail("dns", f"cannot resolve broker host {', '.join(unresolved)}",
                            hint, 4))
    state["nodes"] = nodes
    shown = "; ".join(f"{host} -> {', '.join(sorted({a[0] for a in addresses}))}"
                      for (host, _), addresses in nodes.items())
    if unresolved:  # the others carry the cluster: a warning
        return [Result("WARN", "dns", f"{shown}; cannot resolve {', '.join(unresolved)}", hint)]
    return [Result("OK", "dns", shown)]


def _tcp(state):
    up, down = probe.reach(state["nodes"], state["config"].broker.connect_timeout)
    hint = ("is rabbitmq-server running and reachable? (systemctl status rabbitmq-server on "
            "the broker host; firewall; broker.port)")
    state["nodes_down"] = down
    if not up:
        raise _Failed(_fail("tcp", f"cannot connect to {' nor '.join(down)}", hint, 4))
    if down:
        return [Result("WARN", "tcp", f"connected to {', '.join(up)}; cannot connect to "
                                      f"{', '.join(down)}", hint)]
    return [Result("OK", "tcp", f"connected to {', '.join(up)}")]


def _login(state):
    from celeryd_pkg import broker
    from celeryd_pkg.errors import LoginRefused, VhostRefused

    settings = state["config"]
    b = settings.broker
    url = settings.broker_url()
    try:
        connection = broker.connect(settings)
    except CelerydError as error:
        if isinstance(error, VhostRefused):
            raise _Failed(
                Result("OK", "login", f"user '{b.user}' logged in at {b.host}:{b.port}"),
                _fail("vhost", f"user '{b.user}' has no access to vhost '{b.vhost}'",
                      "grant it on the broker host: celeryd-admin provision (or rabbitmqctl "
                      f"set_permissions -p {b.vhost} {b.user} '.*' '.*' '.*')", 5)) from None
        if isinstance(error, LoginRefused):
            hint = ("no password configured: run celeryd-admin provision on the broker host, "
                    "or celeryd-admin join - here" if not b.password else
                    "check the password in the credentials file (celeryd-admin join - with "
                    "the broker host's join string, or provision --rotate-password there)")
            raise _Failed(_fail("login", f"broker refused the login of user '{b.user}' at "
                                         f"{url}", hint, 5)) from None
        raise _Failed(_fail("login", error.message, "see the message; celeryd-admin check "
                            "again once fixed", error.exit_code)) from None
    state["connection"] = connection
    sock = getattr(connection.transport, "sock", None)
    over = f" over {sock.version()}" if b.tls and hasattr(sock, "version") else ""
    return [Result("OK", "login", f"user '{b.user}' logged in at {b.host}:{b.port}{over}"),
            Result("OK", "vhost", f"vhost '{b.vhost}' is open to user '{b.user}'")]


def _cluster(state):
    """A cluster's members as the local node sees them (on a broker host), else as the tcp
    step found them: a warning when one is down, never a failure (the others serve)."""
    settings = state["config"]
    if not settings.is_cluster():
        return []
    from celeryd_pkg.admin import cluster

    status, detail, hint = cluster.health(len(settings.broker.hosts), state["nodes_down"])
    return [Result(status, "cluster", detail, hint)]


def _store(state):
    """The result store's login (results.backend: redis): AUTH and PING, which every
    account's ACL allows, with the login and TLS settings celery-submit uses."""
    settings = state["config"]
    if settings.results.backend != "redis":
        return []
    from celeryd_pkg import store

    results, url = settings.results, settings.results_url()
    try:
        import redis

        client = redis.Redis(**store.connection_options(settings))
        try:
            client.ping()
        finally:
            client.close()
    except Exception as error:  # noqa: BLE001 - translated, never a traceback
        from celeryd_pkg import broker

        if (connection := state.pop("connection", None)) is not None:
            broker.close(connection)
        if isinstance(error, ImportError):
            raise _Failed(_fail("store", "python3-redis is not installed",
                                "apt install python3-redis", 3)) from None
        translated = store.translate(error, settings)
        hint = ("give this host its store login: celeryd-admin store-setup on the store host"
                if not results.password else "see the message; celeryd-admin check again "
                "once fixed (celeryd-admin store-setup on the store host sets it up)")
        raise _Failed(_fail("store", translated.message, hint, translated.exit_code)) from None
    return [Result("OK", "store", f"logged in at {url}")]


def _beat(state):
    """With beat.entries here, some celery-beat must lead: a warning, not a failure (the
    workers run without it). No line without entries."""
    settings = state["config"]
    if not settings.beat.entries:
        return []
    from celeryd_pkg import leader

    try:
        held = leader.lock_held(state["connection"])
        last = leader.read_state(state["connection"]) or {} if held else {}
    except Exception:  # noqa: BLE001 - the workers step reports a broker that went away
        return []
    count = len(settings.beat.entries)
    if held:
        return [Result("OK", "beat", f"celery-beat on {last.get('leader') or 'a host'} leads; "
                                     f"{count} entries in beat.entries here")]
    return [Result("WARN", "beat", f"no celery-beat leads: the {count} entries of beat.entries "
                   f"are not sent", "systemctl enable --now celery-beat on one or more hosts")]


def _workers(state):
    """Workers are the consumers of client.queue: counted with a passive declare, which any
    account may do (a submit-only client too), and named where the account may ask them."""
    import amqp

    settings = state["config"]
    queue = settings.client.queue
    from celeryd_pkg import broker

    connection = state.pop("connection")
    try:
        consumers = connection.channel().queue_declare(queue, passive=True).consumer_count
    except amqp.exceptions.NotFound:
        consumers = None
    except Exception as error:  # noqa: BLE001 - translated, never a traceback
        translated = broker.translate(error, settings)
        raise _Failed(_fail("workers", translated.message, "celeryd-admin check again",
                            translated.exit_code)) from None
    finally:
        broker.close(connection)
    if not consumers:
        what = "no worker consumes" if consumers == 0 else "no worker has ever declared"
        return [_fail("workers", f"{what} queue '{queue}' on vhost '{settings.broker.vhost}'",
                      "systemctl start celery-worker on a worker host (journalctl -u "
                      "celery-worker); client.queue names the queue", 1)]
    from celeryd_pkg.admin.control import consumers_named

    names = consumers_named(settings, queue, state["ping_timeout"])
    named = f": {', '.join(names)}" if names else ""
    return [Result("OK", "workers", f"{consumers} consuming queue '{queue}'{named}")]


def action_check(args):
    return run(args.config, out=lambda line: print(line, flush=True))


COMMANDS = (
    Command("check", "diagnose config, what tasks may reach, DNS, TCP, AMQP login, vhost "
                     "permissions, the result store's login and live workers", action_check,
            config_option),
)
