"""celery-submit result ID [ID ...]: results looked up in the store, from any client host.

A task id printed by `celery-submit --no-wait` (or by a timeout) finds its result here while
the store keeps it (results.expires), whoever sent it and whether or not the sender still
runs. With results.backend rpc nothing is stored: one line says how to turn storing on.
"""

import sys

from celeryd_pkg import store
from celeryd_pkg.errors import UsageError

__all__ = ["COMMAND", "is_lookup", "parse_args", "run"]

COMMAND = "result"
# celery-submit's options that take a value: the word after them is not the command.
VALUE_OPTIONS = ("--kwarg", "--queue", "--countdown", "--timeout", "--config", "--batch",
                 "--window")


def is_lookup(argv):
    """Whether argv's first positional word is `result` (a task of that name is still
    reachable by its full name, celeryd.result or module.result)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--":
            return False
        elif word.startswith("-"):
            skip = word in VALUE_OPTIONS
        else:
            return word == COMMAND
    return False


def parse_args(argv, parser_class):
    """Given celery-submit's argv holding `result`, return the parsed arguments (ids, wait,
    json, config). Raise UsageError on bad input."""
    argv = list(argv)
    argv.remove(COMMAND)
    parser = parser_class(
        prog="celery-submit result",
        description="Print the stored results of tasks (results.backend: redis), as "
                    "celery-submit prints a result.",
        epilog="Exit codes: 0 all succeeded, 1 any raised, 3 results not stored (rpc) or bad "
               "config, 4 store unreachable, 5 store refused the login, 6 any not found.")
    parser.add_argument("ids", nargs="+", metavar="ID", help="task ids")
    parser.add_argument("--wait", type=float, default=0, metavar="S",
                        help="wait up to S seconds for results not there yet (default 0: look once)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per id: id, state, result, runtime (null)")
    parser.add_argument("--config", metavar="FILE", help="config file (default /etc/celeryd/celeryd.yaml)")
    args = parser.parse_args(argv)
    if not 0 <= args.wait < 1e9:
        raise UsageError(f"celery-submit: --wait {args.wait}: expected seconds >= 0")
    args.ids = [store.check_id(task_id) for task_id in args.ids]
    return args


def run(config, args, format_result, failure_message):
    """Look the ids up (waiting up to args.wait for those not there); print each as
    celery-submit prints a result, in the order given. Return the exit code: 6 if any was
    not found, else 1 if any raised, else 0."""
    store.require_store(config)
    waiter = store.Waiter(config, args.ids, subscribe=args.wait > 0)
    try:
        found = waiter.results(args.wait)
    finally:
        waiter.close()
    code = 0
    for task_id in args.ids:
        outcome = store.outcome(task_id, found.get(task_id))
        if outcome["state"] == "SUCCESS" or args.json:
            print(format_result(outcome, args.json))
        if task_id not in found:
            print(store.not_found_message(task_id), file=sys.stderr)
            code = 6
        elif outcome["state"] != "SUCCESS":
            print(failure_message(None, outcome), file=sys.stderr)
            code = code or 1
    return code

