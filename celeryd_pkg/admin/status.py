"""celeryd-admin status: every worker node, every queue and one verdict, on one screen.

Nodes answer the remote-control command celeryd_status, which every celeryd worker registers:
one broadcast through the control-only app (no task code imported) with a short timeout. Its
reply limit is the number of nodes seen before, so a complete fleet answers at once; a node
that does not answer is shown silent, never waited for beyond the timeout. Queue depths come
from the broker (passive declares). The nodes seen are remembered in a small JSON file, as
only a node known to exist can be missed.
"""

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from celeryd_pkg import config as config_module
from celeryd_pkg.admin import fleet
from celeryd_pkg.admin.cli import Command, config_option
from celeryd_pkg.errors import BrokerUnreachable, CelerydError, ConfigError, UsageError

__all__ = ["COMMANDS", "COMMAND", "DEFAULT_TIMEOUT", "nodes_file", "load_known", "save_known",
           "gather", "snapshot", "action_status"]

COMMAND = "celeryd_status"
DEFAULT_TIMEOUT = 1.0
NODES_FILE = "status-nodes.json"
CLEAR_SCREEN = "\x1b[H\x1b[2J"


def nodes_file(env=os.environ):
    """Where the nodes seen are remembered: /var/lib/celeryd (under CELERYD_ROOT) when this
    account may write there, else its own cache ($XDG_CACHE_HOME or ~/.cache)/celeryd."""
    state = Path(env.get("CELERYD_ROOT", "/")) / "var/lib/celeryd"
    if os.access(state, os.W_OK):
        return state / NODES_FILE
    cache = env.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):  # the XDG spec: a relative path is to be ignored
        cache = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return Path(cache) / "celeryd" / NODES_FILE


def load_known(path, warn=None):
    """Return {node: {"last_seen": ISO time, "reply": its last celeryd_status reply}} from
    path ({} when there is none; an unreadable one is warned about and started afresh)."""
    try:
        with open(path, encoding="utf-8") as stream:
            nodes = json.load(stream)["nodes"]
        if not isinstance(nodes, dict):
            raise ValueError("'nodes' is not an object")
        return nodes
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as error:
        (warn or _warn)(f"celeryd-admin: warning: ignoring {path} ({error}): the nodes seen "
                        f"before are forgotten")
        return {}


def save_known(path, known, warn=None):
    """Write known to path atomically; a failure is a warning: status works without it, only
    a node that stops answering is then not shown silent."""
    from celeryd_pkg import files

    data = json.dumps({"nodes": known}, indent=1, sort_keys=True) + "\n"
    try:
        files.replace(path, data, mode=0o644)
    except ConfigError as error:
        (warn or _warn)(f"{error.message.removesuffix('; run as root')}: a node that stops "
                        f"answering will not be shown silent")


_warned = set()


def _warn(line):
    """Print a warning to stderr, once per run (--watch would repeat it every round)."""
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr, flush=True)


def _ask(app, timeout, limit):
    """Broadcast celeryd_status; return {node: reply} of the nodes that answered before the
    limit was reached or timeout passed without a reply."""
    with app.connection_for_write() as connection:
        connection.connect()  # fails at once if the broker went away, where publish retries
        replies = app.control.broadcast(COMMAND, reply=True, timeout=timeout, limit=limit,
                                        connection=connection)
    answered = {}
    for reply in replies or ():
        answered.update(reply)
    return answered


def queue_names(config, replies, known):
    """The queues to show: worker.queues, then any other a node consumes or is configured
    for, then celeryd.dead."""
    names = list(config.worker.queues)
    others = set()
    for reply in (*replies.values(), *(m.get("reply") or {} for m in known.values())):
        if isinstance(reply, dict):
            others.update(reply.get("configured_queues") or ())
            others.update(reply.get("queues") or ())
    names += sorted(others - set(names) - {fleet.DEAD_QUEUE})
    return names + [fleet.DEAD_QUEUE]


def gather(config, app, known, timeout=DEFAULT_TIMEOUT):
    """Ask the nodes and the broker; return ({queue: QueueDepth or None}, {node: reply}, the
    beat report).
    celeryd.dead is left out when it does not exist. Raise a CelerydError (exit 4 or 5) when
    the broker cannot be used."""
    from celeryd_pkg import broker, leader

    connection = broker.connect(config)
    try:
        limit = len(known) or None
        replies = _ask(app, timeout, limit)
        depths = broker.queue_depths(connection, queue_names(config, replies, known))
        if limit and len(replies) >= limit and _someone_missing(replies, known, depths):
            # The limit was filled by a node never seen before and a known one may still
            # answer, or a consumer did not answer: ask again, waiting the whole timeout.
            replies.update(_ask(app, timeout, None))
            names = queue_names(config, replies, known)
            if list(depths) != names:  # a node found now consumes a queue not asked about
                depths = broker.queue_depths(connection, names)
        beat = fleet.beat_entry(bool(config.beat.entries), leader.lock_held(connection),
                                leader.read_state(connection))
    except CelerydError:
        raise
    except Exception as error:  # noqa: BLE001 - translated, never a traceback
        raise broker.translate(error, config) from None
    finally:
        broker.close(connection)
    if depths.get(fleet.DEAD_QUEUE) is None:
        depths.pop(fleet.DEAD_QUEUE, None)
    return depths, replies, beat


def _someone_missing(replies, known, depths):
    if set(known) - set(replies):
        return True
    for name, depth in depths.items():
        consuming = sum(1 for reply in replies.values()
                        if isinstance(reply, dict) and name in (reply.get("queues") or ()))
        if depth and depth.consumers > consuming:
            return True
    return False


def snapshot(config, app, path, timeout=DEFAULT_TIMEOUT, now=None):
    """Gather, remember the nodes that answered in path, and return the report object."""
    known = load_known(path)
    depths, replies, beat = gather(config, app, known, timeout)
    now = now or datetime.now(timezone.utc)
    for node, reply in replies.items():
        if isinstance(reply, dict) and "error" not in reply:
            known[node] = {"last_seen": fleet.iso(now), "reply": reply}
        else:
            known[node] = {**known.get(node, {}), "last_seen": fleet.iso(now)}
    save_known(path, known)
    return fleet.report(depths, replies, known, now, beat)


def _show(config, app, args, path, out):
    result = snapshot(config, app, path, args.timeout)
    out(json.dumps(result) if args.json else fleet.render(result))
    return 0 if result["verdict"] == "OK" else 1


def _watch(config, app, args, path, out):
    """Redraw every args.watch seconds until Ctrl-C, which ends it with exit 0. A broker that
    went away is shown, and asked again next time; any other error ends it."""
    clear = CLEAR_SCREEN if not args.json and sys.stdout.isatty() else ""
    # Not on a terminal: rounds are appended, a blank line between two (JSON: one a line).
    after = "" if clear or args.json else "\n"
    try:
        while True:
            screen = []
            try:
                _show(config, app, args, path, screen.append)
            except BrokerUnreachable as error:
                screen.append(error.message)
            out(clear + "\n".join(screen) + after)
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def forget(path, node, out=print):
    """Drop node from the nodes remembered (a host decommissioned for good)."""
    known = load_known(path)
    if node not in known:
        names = ", ".join(sorted(known)) or "none"
        raise UsageError(f"celeryd-admin: status --forget: no known node '{node}' in {path} "
                         f"(known: {names})")
    last_seen = known.pop(node).get("last_seen")
    save_known(path, known, warn=_raise_config_error)
    out(f"forgot {node} (last seen {last_seen or 'never'}): status no longer expects it")
    return 0


def _raise_config_error(line):
    raise ConfigError(line)


def action_status(args, out=print):
    from celeryd_pkg.app import make_control_app

    path = nodes_file()
    if args.forget:
        return forget(path, args.forget, out)
    settings = config_module.load(args.config)
    app = make_control_app(settings)
    try:
        if args.watch:
            return _watch(settings, app, args, path, out)
        return _show(settings, app, args, path, out)
    finally:
        app.close()


def _arguments(parser):
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (documented in celeryd-admin(8))")
    parser.add_argument("--watch", type=float, metavar="S",
                        help="redraw every S seconds until Ctrl-C (which exits 0)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"wait this long for the nodes' answers (default "
                             f"{DEFAULT_TIMEOUT:g}); one that does not answer is silent")
    parser.add_argument("--forget", metavar="NODE",
                        help="stop expecting NODE (a decommissioned host) and exit")
    config_option(parser)


def _validate(args):
    if args.watch is not None and not 0 < args.watch <= 86400:
        raise UsageError(f"celeryd-admin: status --watch {args.watch:g}: give seconds "
                         f"between redraws, more than 0")
    if not 0 < args.timeout <= 60:
        raise UsageError(f"celeryd-admin: status --timeout {args.timeout:g}: give seconds, "
                         f"more than 0 and at most 60")
    if args.forget and (args.watch or args.json):
        raise UsageError("celeryd-admin: status --forget NODE takes no --watch or --json")


COMMANDS = (
    Command("status", "show every worker node, every queue and one verdict (OK or DEGRADED, "
                      "exit 1) for the whole fleet", action_status, _arguments, _validate),
)
