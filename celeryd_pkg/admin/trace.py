"""celeryd-admin trace ID [ID ...]: what this host's journal says of some tasks.

The worker sends each log line about a task to journald with the fields CELERY_TASK_ID,
CELERY_TASK_NAME and CELERY_TASK_STATE (celeryd_pkg.journal), so journalctl finds them. No
broker and no config are involved. Only the journals on this host are read (with --merge,
also those that systemd-journal-remote collected here), and the command says so.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from celeryd_pkg.admin.cli import Command
from celeryd_pkg.errors import CelerydError, ConfigError, ResultTimeout, UsageError

__all__ = ["COMMANDS", "validate_id", "journalctl_argv", "parse_entries", "format_entry",
           "json_entry", "misses", "summary", "reads_only_own_journal", "run_journalctl"]

# Celery's ids are uuids; this also keeps "=" and "+" (journalctl's match syntax) out.
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}")
JOURNALCTL_TIMEOUT = 60
# Groups whose members read the system journal, where the workers' lines are.
JOURNAL_GROUPS = ("adm", "systemd-journal")
# C0 controls and DEL except tab and newline: a task's log line must not drive the terminal.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def validate_id(task_id):
    """Raise UsageError (one line naming the argument) unless task_id is a plausible id."""
    if not TASK_ID.fullmatch(task_id):
        shown = ascii(task_id if len(task_id) <= 60 else task_id[:60] + "...")
        raise UsageError(f"celeryd-admin: trace: bad task id {shown}: an id is 1 to 255 "
                         f"letters, digits and . _ : - (a Celery task id is a uuid)")


def journalctl_argv(journalctl, task_ids):
    """The journalctl command line that prints every entry of task_ids as JSON, one a line.
    Matches on one field are OR-ed; --all keeps fields over 4096 bytes (a long traceback),
    which -o json would print as null."""
    return [journalctl, "--merge", "--output=json", "--all", "--no-pager",
            *(f"CELERY_TASK_ID={task_id}" for task_id in task_ids)]


def field(raw, name):
    """A field of a journalctl JSON entry as str (None when absent or null). journalctl gives a
    value that is not printable UTF-8 as a list of byte values, and a field that occurs several
    times as a list of values (the first is taken)."""
    value = raw.get(name)
    if isinstance(value, list) and not all(isinstance(item, int) for item in value):
        value = next((item for item in value if item is not None), None)
    if isinstance(value, list):
        return bytes(value).decode("utf-8", errors="replace")
    return None if value is None else str(value)


def parse_entries(output):
    """Given journalctl -o json's output (bytes), return the entries, each a dict with id,
    name, state, timestamp (microseconds since the epoch), host, unit, identifier, pid and
    message, in time order; lines that are not JSON objects ("-- No entries --") skipped."""
    entries = []
    for line in output.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            raw = json.loads(line)
        except ValueError:
            raise CelerydError(f"celeryd-admin: trace: journalctl printed a line that is not "
                               f"JSON: {line[:60]!a}") from None
        pid, message = field(raw, "_PID"), field(raw, "MESSAGE")
        entries.append({
            "id": field(raw, "CELERY_TASK_ID"), "name": field(raw, "CELERY_TASK_NAME") or None,
            "state": field(raw, "CELERY_TASK_STATE"),
            "timestamp": int(field(raw, "__REALTIME_TIMESTAMP") or 0),
            "host": field(raw, "_HOSTNAME"), "unit": field(raw, "_SYSTEMD_UNIT"),
            "identifier": field(raw, "SYSLOG_IDENTIFIER"),
            "pid": int(pid) if pid and pid.isdigit() else None,
            "message": "(no message)" if message is None else message.rstrip("\n"),
        })
    entries.sort(key=lambda entry: entry["timestamp"])  # stable: journalctl's order in a tie
    return entries


def format_entry(entry):
    """TIME HOST UNIT[PID] STATE MESSAGE, local time; a message's next lines indented by 4."""
    seconds, micro = divmod(entry["timestamp"], 1_000_000)
    when = datetime.fromtimestamp(seconds).replace(microsecond=micro)
    unit = entry["unit"] or entry["identifier"] or "-"
    if unit.endswith(".service"):
        unit = unit[:-len(".service")]
    process = unit if entry["pid"] is None else f"{unit}[{entry['pid']}]"
    message = CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", entry["message"])
    first, *rest = message.split("\n")
    return "\n".join([f"{when:%Y-%m-%d %H:%M:%S.%f} {entry['host'] or '-'} {process} "
                      f"{entry['state'] or '-'} {first}", *(f"    {line}" for line in rest)])


def json_entry(entry):
    """One object of --json: id, name, state, time (ISO 8601 UTC), host, unit, pid, message."""
    when = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=entry["timestamp"])
    return {"id": entry["id"], "name": entry["name"], "state": entry["state"],
            "time": when.isoformat(timespec="microseconds"), "host": entry["host"],
            "unit": entry["unit"], "pid": entry["pid"], "message": entry["message"]}


def misses(task_ids, entries):
    """The ids of task_ids, in their order, that no entry is about."""
    found = {entry["id"] for entry in entries}
    return [task_id for task_id in task_ids if task_id not in found]


def summary(hostname, entries):
    """The stderr line that says which journals were read and where the entries came from."""
    hosts = sorted({entry["host"] for entry in entries if entry["host"]})
    count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    found = f"{count} from {', '.join(hosts)}" if hosts else count
    return (f"celeryd-admin: trace read the journals on this host ({hostname}) and any "
            f"forwarded to it: {found}; a task that ran on another host is in that host's "
            f"journal (run celeryd-admin trace there)")


def reads_only_own_journal(euid, gids, journal_gids):
    """True when an account (euid, its group ids) reads only its own user journal: not root
    and in none of the groups whose ids are journal_gids."""
    return euid != 0 and not set(gids) & set(journal_gids)


def _journal_gids():
    import grp

    return [group.gr_gid for group in grp.getgrall() if group.gr_name in JOURNAL_GROUPS]


def run_journalctl(task_ids):
    """Run journalctl for task_ids and return its standard output (bytes). Raise ConfigError
    (exit 3) when it is not installed, CelerydError (exit 1) with its first error line when it
    fails, ResultTimeout (exit 6) when it takes over a minute."""
    journalctl = shutil.which("journalctl")
    missing = ConfigError("celeryd-admin: journalctl not found: trace reads systemd's journal")
    if journalctl is None:
        raise missing
    try:
        done = subprocess.run(journalctl_argv(journalctl, task_ids), capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=JOURNALCTL_TIMEOUT, check=False)
    except FileNotFoundError:
        raise missing from None
    except subprocess.TimeoutExpired:
        raise ResultTimeout(f"celeryd-admin: trace: journalctl gave no answer in "
                            f"{JOURNALCTL_TIMEOUT} s") from None
    if done.returncode != 0:
        errors = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        reason = errors[0] if errors else f"exit status {done.returncode}"
        raise CelerydError(f"celeryd-admin: trace: journalctl failed: {reason}")
    return done.stdout


def action_trace(args):
    task_ids = list(dict.fromkeys(args.ids))  # each id once, in the order given
    entries = parse_entries(run_journalctl(task_ids))
    if args.json:
        print(json.dumps([json_entry(entry) for entry in entries], sort_keys=True))
    else:
        for entry in entries:
            print(format_entry(entry))
    sys.stdout.flush()
    print(summary(socket.gethostname(), entries), file=sys.stderr)
    missed = misses(task_ids, entries)
    for task_id in missed:
        print(f"celeryd-admin: no journal entry for task {task_id} on this host", file=sys.stderr)
    if missed and reads_only_own_journal(os.geteuid(), [os.getegid(), *os.getgroups()],
                                         _journal_gids()):
        print("celeryd-admin: only your own journal was readable: the workers' lines are in "
              "the system journal (run as root, or as a member of group adm or "
              "systemd-journal)", file=sys.stderr)
    return 1 if missed else 0


def _arguments(parser):
    parser.add_argument("ids", nargs="+", metavar="ID", help="a task id, as celery-submit "
                        "prints it (several: the entries of each, merged in time order)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON array of objects instead")


def _validate(args):
    for task_id in args.ids:
        validate_id(task_id)


COMMANDS = (
    Command("trace", "print what this host's journal says of the tasks ID... (its workers' "
                     "lines and any journals forwarded here)", action_trace, _arguments,
            _validate),
)
