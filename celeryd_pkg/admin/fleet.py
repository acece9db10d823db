"""The report of celeryd-admin status: nodes, queues, the beat leader and one verdict, as an
object and as text.

Pure functions over what status.py gathered (the workers' celeryd_status replies, the broker's
queue depths, the nodes remembered from earlier runs), so every rule is tested without a broker.
"""

from datetime import datetime, timezone

from celeryd_pkg.poison import DEAD_QUEUE

__all__ = ["REPLY_KEYS", "IDENTITY_KEYS", "report", "render", "human_duration", "iso",
           "beat_entry"]

# The keys of a celeryd_status reply (contract of issue 16): every node entry has them all.
REPLY_KEYS = ("node", "host", "instance", "version", "celery", "pid", "uptime", "concurrency",
              "queues", "configured_queues", "draining", "active", "held", "held_by_queue",
              "received", "succeeded", "failed", "retried")
# How many of the entries due next the text shows (--json has them all).
NEXT_SHOWN = 5
# What a silent node keeps from its last answer: what it is, not what it was doing.
IDENTITY_KEYS = ("node", "host", "instance", "version", "celery", "concurrency",
                 "configured_queues")


def iso(moment):
    """ISO-8601 in UTC, to the second: 2026-11-30T17:20:01+00:00."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def report(depths, replies, known, now, beat=None):
    """Given {queue: QueueDepth or None} (None: no such queue), {node: reply} of the nodes that
    answered now, {node: {"last_seen", "reply"}} remembered from earlier runs, the time and
    the beat_entry(), return the object `status --json` prints."""
    nodes = _node_entries(replies, known, now)
    up = [entry for entry in nodes if entry["state"] != "silent"]
    queues = [_queue_entry(name, depth, up) for name, depth in depths.items()]
    reasons = _reasons(nodes, queues, iso(now))
    if beat and not beat["leading"]:
        reasons.append("no celery-beat leads: periodic tasks are not sent (systemctl enable "
                       "--now celery-beat on one or more hosts)")
    return {"verdict": "DEGRADED" if reasons else "OK", "reasons": reasons, "time": iso(now),
            "nodes": nodes, "queues": queues, "beat": beat}


def beat_entry(configured, held, state):
    """The `beat` object of status --json: who leads (held: the lock is taken now; state: the
    last one a leader published) and the entries' next slots; None when there are no periodic
    tasks here (configured: beat.entries of this host) nor on record. state is as
    leader.read_state returns it (clean_state)."""
    state = state if isinstance(state, dict) else {}
    upcoming = state.get("next") or {}  # leader.read_state keeps only times there
    if not configured and not upcoming and not held:
        return None

    def at(stamp):
        if not isinstance(stamp, (int, float)):
            return None
        return iso(datetime.fromtimestamp(stamp, timezone.utc))

    return {"leading": held, "leader": state.get("leader") if held else None,
            "since": at(state.get("since")) if held else None,
            "last_leader": state.get("leader"), "released": at(state.get("released")),
            "updated": at(state.get("updated")),
            "next": [{"entry": name, "at": at(slot)}
                     for name, slot in sorted(upcoming.items(), key=lambda item: item[1])]}


def _node_entries(replies, known, now):
    entries = []
    for node, reply in replies.items():
        entry = dict.fromkeys(REPLY_KEYS)
        if isinstance(reply, dict) and "error" not in reply:
            entry.update(reply)
        else:  # a worker without celeryd_status (older celeryd) answers {"error": ...}
            entry["error"] = str(reply.get("error") if isinstance(reply, dict) else reply)
        entry.update(node=node, state="draining" if entry["draining"] else "up",
                     last_seen=iso(now))
        entries.append(entry)
    for node, memory in known.items():
        if node not in replies:
            entry = dict.fromkeys(REPLY_KEYS)
            last = memory.get("reply") or {}
            entry.update({key: last.get(key) for key in IDENTITY_KEYS})
            entry.update(node=node, state="silent", last_seen=memory.get("last_seen"))
            entries.append(entry)
    return sorted(entries, key=lambda entry: entry["node"])


def _queue_entry(name, depth, up):
    consuming = [entry for entry in up if name in (entry["queues"] or ())]
    unacked = sum((entry["held_by_queue"] or {}).get(name, 0) for entry in up)
    return {"name": name, "ready": depth.ready if depth else None,
            "unacked": unacked if depth else None,
            "consumers": depth.consumers if depth else None,
            "answering_consumers": len(consuming), "oldest_age": None}


def _reasons(nodes, queues, now):
    reasons = [f"{entry['node']} silent (last seen {_when(entry['last_seen'], now)})"
               for entry in nodes if entry["state"] == "silent"]
    silent = [entry for entry in nodes if entry["state"] == "silent"]

    def silent_for(queue):
        """Consumers a silent node explains: it is reported already."""
        return sum(1 for entry in silent if queue in (entry["configured_queues"] or ()))

    if not nodes:
        reasons.append("no worker answered (systemctl status celery-worker on the worker hosts)")
    for queue in queues:
        name, ready, consumers = queue["name"], queue["ready"], queue["consumers"]
        if name == DEAD_QUEUE:
            if ready:
                reasons.append(f"{ready} dead task{'' if ready == 1 else 's'} in {DEAD_QUEUE} "
                               f"(celeryd-admin dead list)")
        elif ready is None:
            reasons.append(f"queue {name} does not exist: no worker has declared it")
        elif ready and not consumers:
            reasons.append(f"queue {name}: {ready} ready, no consumer")
        elif consumers > queue["answering_consumers"] + silent_for(name):
            reasons.append(f"queue {name}: {consumers} consumers, {queue['answering_consumers']}"
                           f" of them answering (a consumer that does not answer celeryd_status)")
    return reasons


def human_duration(seconds):
    """3h12m, 2d4h, 12m, 45s: an uptime or an age at a glance."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{seconds}s"


def _when(stamp, now=None):
    """An ISO time as '2026-11-30 17:20:01 UTC' (with ', 5m ago' given the ISO time now), or
    'never' when unknown."""
    if not stamp:
        return "never"
    moment = datetime.fromisoformat(stamp)
    text = moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if now:
        age = (datetime.fromisoformat(now) - moment).total_seconds()
        text += f", {human_duration(age)} ago"
    return text


def _cell(value):
    return "-" if value is None else str(value)


def _table(headers, rows, left):
    """Aligned columns: those numbered in left flush left, the others (numbers) right."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(width) if i in left else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells[:len(headers)]).rstrip() + "".join(row[len(headers):]))
    return lines


def _node_row(entry, now):
    uptime = None if entry["uptime"] is None else human_duration(entry["uptime"])
    note = ""
    if entry["state"] == "silent":
        note = f"  last seen {_when(entry['last_seen'], now)}"
    elif "error" in entry:
        note = f"  answered without status ({entry['error']}): an older celeryd?"
    return [entry["node"], _cell(entry["host"]), entry["state"], _cell(entry["concurrency"]),
            _cell(entry["active"]), _cell(entry["succeeded"]), _cell(entry["failed"]),
            _cell(uptime), _cell(entry["version"]), note]


def render(result):
    """The text of `status`: a header, the nodes, the queues, and the verdict line last."""
    moment = _when(result["time"])
    lines = [f"celeryd fleet at {moment}", ""]
    nodes = [_node_row(entry, result["time"]) for entry in result["nodes"]]
    lines += _table(["NODE", "HOST", "STATE", "CONC", "BUSY", "DONE", "FAILED", "UPTIME",
                     "VERSION"], nodes, left={0, 1, 2, 7, 8}) if nodes else ["no worker nodes"]
    queues = [[queue["name"], _cell(queue["ready"]), _cell(queue["unacked"]),
               _cell(queue["consumers"]),
               "" if queue["ready"] is not None else "  does not exist"]
              for queue in result["queues"]]
    lines += [""] + _table(["QUEUE", "READY", "UNACKED", "CONSUMERS"], queues, left={0})
    lines += _beat_lines(result.get("beat"))
    verdict = result["verdict"]
    if result["reasons"]:
        verdict += ": " + "; ".join(result["reasons"])
    return "\n".join(lines + ["", verdict])


def _beat_lines(beat):
    if not beat:
        return []
    if beat["leading"]:
        head = f"BEAT: celery-beat on {beat['leader'] or '?'} leads since {_when(beat['since'])}"
    else:
        head = "BEAT: no celery-beat leads"
        if beat["last_leader"]:
            how = f"let go {_when(beat['released'])}" if beat["released"] else \
                f"last heard of {_when(beat['updated'])}"
            head += f" (the last leader, {beat['last_leader']}, {how})"
    rows = [[entry["entry"], _when(entry["at"])] for entry in beat["next"][:NEXT_SHOWN]]
    more = len(beat["next"]) - NEXT_SHOWN
    return (["", head] + (_table(["ENTRY", "NEXT"], rows, left={0, 1}) if rows and
                          beat["leading"] else [])
            + ([f"and {more} more"] if more > 0 and beat["leading"] else []))
