"""celery-submit: send a task by name to the celeryd workers and print its result."""

import argparse
import json
import os
import socket
import sys
import time
import uuid

from celeryd_pkg.errors import (
    CelerydError, ConfigError, ResultTimeout, TaskFailed, UsageError, report,
)
from celeryd_pkg.protocol import READY_STATES, REPLY_TO, build_message, destination

__all__ = ["main", "parse_args", "parse_value", "task_name", "build_message"]


class Parser(argparse.ArgumentParser):
    def __init__(self, **options):
        super().__init__(formatter_class=Formatter, **options)

    def error(self, message):
        raise UsageError(f"celery-submit: {message} (see {self.prog} --help)")


class Formatter(argparse.HelpFormatter):
    """argparse's help layout at shutil.get_terminal_size()'s width, found without importing
    shutil (and bz2 and lzma with it): argparse makes one for every add_argument."""

    def __init__(self, prog):
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
            except (AttributeError, ValueError, OSError):
                columns = 80
        super().__init__(prog, width=columns - 2)


def parse_args(argv):
    """Given argv, return the parsed arguments. Raise UsageError on bad input, before any
    broker I/O."""
    parser = Parser(
        prog="celery-submit",
        description="Send a task to the celeryd workers and print its result; "
                    "`celery-submit result ID ...` prints stored results (see --help there).",
        epilog="Exit codes: 0 success, 1 the task raised, 2 bad arguments, 3 bad config, "
               "4 broker unreachable, 5 broker refused access, 6 timeout waiting for the result.")
    parser.add_argument("task", nargs="?",
                        help="task name: add, mul, xsum, echo, sleep, or a dotted name")
    parser.add_argument("args", nargs="*", metavar="ARG",
                        help="positional arguments, JSON literals where they parse")
    parser.add_argument("--kwarg", action="append", default=[], metavar="K=V",
                        help="keyword argument (repeatable); V is a JSON literal or a string")
    parser.add_argument("--queue", help="queue to send to (default: client.queue)")
    parser.add_argument("--countdown", type=float, metavar="S", help="run no sooner than S seconds from now")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="seconds to wait for the result (default: client.timeout)")
    parser.add_argument("--no-wait", action="store_true", help="print the task id and exit")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: id, state, result, runtime")
    parser.add_argument("--config", metavar="FILE", help="config file (default /etc/celeryd/celeryd.yaml)")
    parser.add_argument("--batch", metavar="FILE",
                        help="send one task per line of FILE (- for stdin), JSON, and print one "
                             "JSON line per task as it completes")
    parser.add_argument("--window", type=int, metavar="N",
                        help="with --batch: most messages in flight unconfirmed (default 1000)")
    args = parser.parse_args(argv)
    for name in ("countdown", "timeout"):
        value = getattr(args, name)
        if value is not None and not (0 <= value < 1e9):
            raise UsageError(f"celery-submit: --{name} {value}: expected seconds >= 0")
    if args.window is not None and (args.batch is None or args.window < 1):
        raise UsageError(f"celery-submit: --window {args.window}: expected N >= 1, with --batch")
    if args.batch is not None:
        _check_batch_args(args)
        if args.timeout == 0:
            # It bounds the broker's silence: 0 would give up on every line at once.
            raise UsageError("celery-submit: --timeout 0: with --batch, expected seconds > 0")
        return args
    if args.task is None:
        parser.error("the following arguments are required: task")
    args.task = task_name(args.task)
    args.args = [parse_value(value) for value in args.args]
    args.kwargs = {}
    for item in args.kwarg:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"celery-submit: --kwarg {item!r}: expected NAME=VALUE")
        args.kwargs[key] = parse_value(value)
    return args


def _check_batch_args(args):
    """--batch lines carry the task, its arguments and countdown; the output is JSON lines."""
    for option, used in (("TASK", args.task is not None), ("--kwarg", args.kwarg),
                         ("--countdown", args.countdown is not None), ("--json", args.json)):
        if used:
            raise UsageError(f"celery-submit: --batch takes no {option}: each line names its "
                             f"task and arguments, and the output is JSON lines")


def task_name(name):
    """Bare names are built-ins (add -> celeryd.add); dotted names pass through."""
    from celeryd_pkg.batch import task_name as resolve

    try:
        return resolve(name)
    except ValueError as error:
        raise UsageError(f"celery-submit: {error}") from None


def parse_value(text):
    """A JSON literal where it parses (4 -> int, [1,2] -> list, "x" -> str), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        raise UsageError(f"celery-submit: argument {text[:20]}...: nested too deeply") from None


def submit(config, args):
    """Publish the task (confirmed, mandatory) and, unless --no-wait, wait for its result: by
    direct reply-to, or in the result store (results.backend: redis). Return a dict with id,
    state, result and runtime."""
    import amqp

    from celeryd_pkg import broker

    task_id = str(uuid.uuid4())
    timeout = config.client.timeout if args.timeout is None else args.timeout
    queue = args.queue or config.client.queue
    stored = config.results.backend == "redis"
    direct = not (args.no_wait or stored)
    waiter = connection = None
    replies = []
    returned = []
    try:
        if stored and not args.no_wait:
            from celeryd_pkg import store

            # Subscribed before the task exists: its result cannot slip by.
            waiter = store.Waiter(config, [task_id])
        connection = broker.connect(config)
        channel = connection.channel()
        if direct:
            channel.basic_consume(REPLY_TO, no_ack=True, callback=replies.append)
        channel.events["basic_return"].add(lambda *returned_args: returned.append(True))
        body, properties = build_message(args.task, args.args, args.kwargs, task_id,
                                         REPLY_TO if direct else None, args.countdown)
        if stored:  # kept in the store even when nobody waits: `celery-submit result ID`
            properties["application_headers"]["ignore_result"] = False
        started = time.monotonic()
        # To the queue's own exchange (as the workers declare it), not the default one: a
        # submit-only account may write to task exchanges but not into the workers' control
        # queues. Waits for the broker's confirm; an unroutable message comes back first.
        try:
            exchange, routing_key = destination(queue, args.countdown, config.is_cluster())
            channel.basic_publish_confirm(amqp.Message(body, **properties), exchange=exchange,
                                          routing_key=routing_key, mandatory=True,
                                          confirm_timeout=config.broker.connect_timeout)
        except amqp.exceptions.NotFound:
            returned.append(True)
        if returned:
            raise broker.missing_queue(queue, config)
        if args.no_wait:
            return {"id": task_id, "state": "PENDING", "result": None, "runtime": None}
        if waiter is not None:
            found = waiter.results(started + timeout - time.monotonic())
            if task_id not in found:
                raise store.timeout_error(config, task_id, timeout)
            reply = found[task_id]
        else:
            reply = _wait_for_result(config, connection, replies, task_id, started, timeout)
    except CelerydError:
        raise
    except Exception as error:  # noqa: BLE001 - translated, never shown as a traceback
        raise broker.translate(error, config) from None
    finally:
        if waiter is not None:
            waiter.close()
        if connection is not None:
            broker.close(connection)
    return {"id": task_id, "state": reply.get("status"), "result": reply.get("result"),
            "runtime": round(time.monotonic() - started, 6)}


def _wait_for_result(config, connection, replies, task_id, started, timeout):
    deadline = started + timeout
    while True:
        for message in replies:
            if message.properties.get("correlation_id") == task_id:
                reply = json.loads(message.body)
                if reply.get("status") in READY_STATES:
                    return reply
        replies.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            from celeryd_pkg import store  # only on a timeout: start-up does without it

            raise store.timeout_error(config, task_id, timeout)
        try:
            connection.drain_events(timeout=remaining)
        except socket.timeout:
            pass


def format_result(outcome, as_json):
    if as_json:
        return json.dumps(outcome, sort_keys=True)
    result = outcome["result"]
    return result if isinstance(result, str) else json.dumps(result)


def failure_message(task, outcome):
    """The line of a task that raised; task None: its name is not known (a stored result)."""
    error = outcome["result"] if isinstance(outcome["result"], dict) else {}
    exc_type = error.get("exc_type", outcome["state"])
    message = error.get("exc_message", "")
    if isinstance(message, list):
        message = ", ".join(str(part) for part in message)
    task = f"{task} [{outcome['id']}]" if task else outcome["id"]
    return f"celery-submit: task {task} raised {exc_type}: {message}"


def main(argv=None):
    """Run celery-submit on argv and return its exit code; as the program (argv None), exit."""
    if argv is None:
        _exit(_main(sys.argv[1:]))
    return _main(argv)


def _exit(code):
    """Exit with code once stdout and stderr are written, skipping the interpreter's teardown
    of every module (a tenth of celery-submit's run): nothing else is open by then."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the interpreter reports it as it always has
        sys.exit(code)
    os._exit(code)


def _main(argv):
    try:
        from celeryd_pkg import config, lookup

        looking_up = lookup.is_lookup(argv)
        args = lookup.parse_args(argv, Parser) if looking_up else parse_args(argv)

        settings = config.load(args.config)
        warning = settings.plain_remote_warning()
        if warning:
            print(warning, file=sys.stderr)
        if looking_up:
            return lookup.run(settings, args, format_result, failure_message)
        if args.batch is not None:
            if settings.results.backend == "redis" and not args.no_wait:
                raise ConfigError(
                    "celery-submit: --batch waits on direct reply-to, not in the result store "
                    "(results.backend: redis): add --no-wait and look the ids up with "
                    "celery-submit result ID ...")
            from celeryd_pkg import batch

            return batch.run(settings, args)
        outcome = submit(settings, args)
        if args.no_wait and not args.json:
            print(outcome["id"])
            return 0
        if outcome["state"] != "SUCCESS":
            if args.json:
                print(format_result(outcome, True))
            raise TaskFailed(failure_message(args.task, outcome))
        print(format_result(outcome, args.json))
        return 0
    except ResultTimeout as error:
        # The id on stdout, so a script can look the task up later.
        print(error.task_id)
        return report(error, "celery-submit")
    except CelerydError as error:
        return report(error, "celery-submit")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
