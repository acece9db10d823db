"""The beat: section's periodic-task entries: their checks, and the Entry each one makes."""

import json
import re
import uuid
from collections import namedtuple
from datetime import date, datetime

from celeryd_pkg.slots import (
    CRON_FORM, MAX_EVERY, Cron, Every, kind_of as _kind, shown_value as _show,
)

__all__ = ["ENTRY_KEYS", "Entry", "check_entry", "make_entry", "entries_of", "task_id"]

ENTRY_KEYS = ("task", "args", "kwargs", "queue", "every", "cron")
# One entry's name: it goes into log lines, metrics labels and the scheduler's state keys.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
Entry = namedtuple("Entry", "name task args kwargs queue rule")
# Task ids of the slots are uuid5 names in this namespace (any fixed one would do).
ID_NAMESPACE = uuid.UUID("8f0e4f1c-4d3a-5a55-9a59-2f7c3b1d5e61")


def _not_json(value):
    """Return why json.dumps cannot write value, or None."""
    culprits = []

    def refuse(item):
        culprits.append(item)
        raise TypeError

    try:
        json.dumps(value, default=refuse)
    except (TypeError, ValueError, RecursionError) as error:
        if culprits:
            item = culprits[0]
            hint = "; quote it" if isinstance(item, (date, datetime)) else ""
            return f"{_show(item)} is not JSON ({_kind(item)}){hint}"
        return f"is not JSON ({' '.join(str(error).split()) or type(error).__name__})"
    return None


def _check_name_like(value, what):  # a task or queue name
    if not isinstance(value, str):
        return f"expected {what}, got {_kind(value)}"
    if not value or any(c.isspace() for c in value):
        return f"expected {what} without spaces, got {_show(value)}"
    return None


def check_entry(name, body):
    """Return [(key, problem)] for all that is wrong with one entry; key None: the whole entry."""
    problems = []
    if not isinstance(name, str) or not NAME.fullmatch(name):
        problems.append((None, f"entry name {_show(name)} must be 1-100 letters, digits, "
                               f"'_', '.', ':' or '-', starting with a letter or digit"))
    if not isinstance(body, dict):
        return problems + [(None, f"expected a mapping of task, args, kwargs, queue and every "
                                  f"or cron, got {_kind(body)}")]
    problems += [(str(key), f"unknown task option {_show(key)} (expected one of "
                            f"{', '.join(ENTRY_KEYS)})") for key in body if key not in ENTRY_KEYS]
    problems.append(("task", _check_name_like(body["task"], "a task name") if "task" in body
                     else "is required: the task's registered name, e.g. reports.nightly"))
    args, kwargs, every = body.get("args", []), body.get("kwargs", {}), body.get("every", 1)
    problems.append(("args", _not_json(args) if isinstance(args, list)
                     else f"expected a list of arguments, got {_kind(args)}"))
    if not isinstance(kwargs, dict):
        problems.append(("kwargs", f"expected a mapping of keyword arguments, got {_kind(kwargs)}"))
    else:
        odd = [key for key in kwargs if not isinstance(key, str)]
        problems.append(("kwargs", f"keyword names must be strings, got {_show(odd[0])}" if odd
                         else _not_json(kwargs)))
    if "queue" in body:
        problems.append(("queue", _check_name_like(body["queue"], "a queue name")))
    if isinstance(every, bool) or not isinstance(every, int):
        problems.append(("every", f"expected a whole number of seconds, got {_kind(every)}"
                                  + (f" ({_show(every)})" if isinstance(every, float) else "")))
    elif not 1 <= every <= MAX_EVERY:
        problems.append(("every", f"must be at least 1 second, got {every}" if every < 1 else
                         f"must be at most {MAX_EVERY} seconds (ten years), got {every}"))
    if "cron" in body:
        try:
            Cron(body["cron"])
        except ValueError as error:
            problems.append(("cron", str(error)))
    if "every" not in body and "cron" not in body:
        problems.append((None, f"needs every: SECONDS or cron: {CRON_FORM}"))
    elif "every" in body and "cron" in body:
        problems.append((None, "has both every and cron; keep one"))
    return [(key, problem) for key, problem in problems if problem]


def make_entry(name, body, timezone_name, default_queue):
    """Return the Entry of a body check_entry accepted; cron runs on timezone_name's clock."""
    rule = Every(body["every"]) if "every" in body else Cron(body["cron"], timezone_name)
    return Entry(name, body["task"], list(body.get("args", [])), dict(body.get("kwargs", {})),
                 body.get("queue", default_queue), rule)


def entries_of(config):
    """Return {name: Entry} of the config's beat.entries."""
    return {name: make_entry(name, body, config.beat.timezone, config.client.queue)
            for name, body in sorted(config.beat.entries.items())}


def task_id(vhost, entry_name, slot):
    """The task id of an entry's slot: the same on every host, so a slot sent twice would
    show as one id twice."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{vhost}/{entry_name}/{slot!r}"))
