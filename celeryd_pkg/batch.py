"""Many tasks at once: batch lines checked whole before any is sent, and their outcomes.

`celery-submit --batch FILE` reads one task per line (JSON: an object, or an array
[task, args, kwargs]); `celeryd_pkg.client.submit_many` takes the same shapes already decoded,
or Celery signatures. Both publish through pipeline.Pipeline and report one Outcome per task.
"""

import json
import sys
from collections import namedtuple

from celeryd_pkg.errors import UsageError
from celeryd_pkg.protocol import NAMESPACE

__all__ = ["Task", "Outcome", "NOT_STORED", "parse_line", "to_task", "task_name",
           "BatchInput", "exit_code", "summary", "run"]

Task = namedtuple("Task", "name args kwargs queue countdown")
# index: the line number (celery-submit) or the position in the iterable (submit_many).
Outcome = namedtuple("Outcome", "index id state result error")

OBJECT_KEYS = ("task", "args", "kwargs", "queue", "countdown")
# The states of a task the broker did not store (safe to resend, except UNCONFIRMED: the
# confirm was lost with the connection, the task may be stored).
NOT_STORED = ("RETURNED", "NACKED", "UNCONFIRMED", "NOT_SENT")


def task_name(name):
    """Return the registered name: bare names are built-ins (add -> celeryd.add), dotted
    names pass through. Raise ValueError for a name Celery could not have registered."""
    if (not isinstance(name, str) or not name or any(c.isspace() for c in name)
            or name.startswith(".") or name.endswith(".")):
        raise ValueError(f"task name {name!r}: expected NAME or module.NAME")
    return name if "." in name else NAMESPACE + name


def parse_line(text, default_queue):
    """Given one JSON line, return its Task (queue default_queue when it names none).
    Raise ValueError with the reason when the line is not a task."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as error:
        raise ValueError(f"not JSON ({getattr(error, 'msg', error)})") from None
    return to_task(value, default_queue)


def to_task(value, default_queue):
    """Given a decoded line (object or [task, args, kwargs]) or a Celery signature, return
    its Task. Raise ValueError with the reason when it is not a task."""
    queue = countdown = None
    if isinstance(value, dict) and "subtask_type" in value and "options" in value:
        # A Celery signature (a dict subclass): add.s(4, 4).set(queue="q", countdown=5).
        name, args, kwargs = value["task"], value.get("args", ()), value.get("kwargs", {})
        queue, countdown = value["options"].get("queue"), value["options"].get("countdown")
    elif isinstance(value, dict):
        unknown = sorted(key for key in value if key not in OBJECT_KEYS)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (expected {', '.join(OBJECT_KEYS)})")
        if "task" not in value:
            raise ValueError('no "task" key')
        name, args, kwargs = value["task"], value.get("args", []), value.get("kwargs", {})
        queue, countdown = value.get("queue"), value.get("countdown")
    elif isinstance(value, (list, tuple)) and 1 <= len(value) <= 3:
        name, args, kwargs = (list(value) + [[], {}][len(value) - 1:])[:3]
    else:
        raise ValueError('expected an object {"task": ...} or an array [task, args, kwargs]')
    name = task_name(name)
    if not isinstance(args, (list, tuple)):
        raise ValueError("args: expected an array")
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise ValueError("kwargs: expected an object")
    if queue is None:
        queue = default_queue
    elif not isinstance(queue, str) or not queue or any(c.isspace() for c in queue):
        raise ValueError(f"queue {queue!r}: expected a queue name")
    if countdown is not None and (isinstance(countdown, bool)
                                  or not isinstance(countdown, (int, float))
                                  or not 0 <= countdown < 1e9):
        raise ValueError(f"countdown {countdown!r}: expected seconds >= 0")
    return Task(name, list(args), kwargs, queue, countdown or None)


class BatchInput:
    """The lines of a batch file (or stdin, spooled to an unlinked temporary file so that a
    second pass can read it): check() validates every line, tasks() yields them."""

    def __init__(self, path, default_queue):
        self.path = path
        self.label = "stdin" if path == "-" else path
        self.default_queue = default_queue
        self.queues = set()
        self.count = 0
        self._spool = None

    def check(self):
        """Validate every line before anything is sent. Raise UsageError naming the file and
        line of the first bad one."""
        for number, text in self._lines(first_pass=True):
            try:
                self.queues.add(parse_line(text, self.default_queue).queue)
            except ValueError as error:
                raise UsageError(f"celery-submit: {self.label} line {number}: {error}") from None
            self.count += 1

    def tasks(self):
        """Yield (line number, Task) for every non-blank line, in order."""
        for number, text in self._lines(first_pass=False):
            yield number, parse_line(text, self.default_queue)

    def close(self):
        if self._spool is not None:
            self._spool.close()

    def _lines(self, first_pass):
        stream = self._open(first_pass)
        try:
            for number, raw in enumerate(stream, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise UsageError(f"celery-submit: {self.label} line {number}: not UTF-8 "
                                     f"(byte {error.start + 1})") from None
                if text.strip():
                    yield number, text
        finally:
            if stream is not self._spool:
                stream.close()

    def _open(self, first_pass):
        if self.path != "-":
            try:
                return open(self.path, "rb")
            except OSError as error:
                raise UsageError(f"celery-submit: --batch {self.path}: "
                                 f"{error.strerror}") from None
        if first_pass:
            import sys
            import tempfile

            self._spool = tempfile.TemporaryFile()
            return _Tee(sys.stdin.buffer, self._spool)
        self._spool.seek(0)
        return self._spool


class _Tee:
    """Iterate a stream's lines, copying each into spool."""

    def __init__(self, stream, spool):
        self.stream, self.spool = stream, spool

    def __iter__(self):
        for raw in self.stream:
            self.spool.write(raw)
            yield raw

    def close(self):
        self.spool.flush()


# Exit code by state, worst first: not stored (4), no result (6), raised (1).
_EXIT = tuple((state, 4) for state in NOT_STORED) + (
    ("TIMEOUT", 6), ("LOST", 6), ("FAILURE", 1))


def exit_code(counts):
    """Given {state: count}, return the batch's exit code."""
    return next((code for state, code in _EXIT if counts.get(state)), 0)


_WORDS = {"SUCCESS": "succeeded", "SENT": "sent", "FAILURE": "raised",
          "TIMEOUT": "timed out", "LOST": "result lost (the task was stored)",
          "RETURNED": "unroutable", "NACKED": "refused by the broker",
          "UNCONFIRMED": "not confirmed (check before resending)",
          "NOT_SENT": "not sent (resend them)"}


def summary(counts):
    """Given {state: count}, return e.g. '10 lines: 8 succeeded, 2 raised'."""
    total = sum(counts.values())
    parts = [f"{counts[state]} {_WORDS[state]}" for state in _WORDS if counts.get(state)]
    return f"{total} lines: " + ", ".join(parts)


def run(config, args):
    """celery-submit --batch: send every line of args.batch through one pipelined connection;
    print an outcome line per task (or, with --no-wait, the ids in input order). Return the
    exit code."""
    from celeryd_pkg.errors import AccessRefused
    from celeryd_pkg.pipeline import WINDOW, Pipeline

    source = BatchInput(args.batch, args.queue or config.client.queue)
    pipeline = Pipeline(config, wait=not args.no_wait, timeout=args.timeout,
                        window=args.window or WINDOW)
    counts = {}
    try:
        source.check()  # every line, before anything is sent
        if source.count:
            pipeline.check_queues(source.queues)
            for outcome in pipeline.run(source.tasks()):
                counts[outcome.state] = counts.get(outcome.state, 0) + 1
                _print_outcome(outcome, args.no_wait)
    finally:
        source.close()
        pipeline.close()
    code = exit_code(counts)
    if isinstance(pipeline.error, AccessRefused):
        code = pipeline.error.exit_code
    if code:
        print(f"celery-submit: {summary(counts)}", file=sys.stderr)
    return code


def _print_outcome(outcome, no_wait):
    if not no_wait:
        line = {"line": outcome.index, "id": outcome.id, "state": outcome.state,
                "result": outcome.result}
        if outcome.error:
            line["error"] = outcome.error
        print(json.dumps(line, sort_keys=True), flush=True)
    elif outcome.state == "SENT":
        print(outcome.id, flush=True)
    else:
        print(f"celery-submit: line {outcome.index}: {outcome.state}: {outcome.error}",
              file=sys.stderr, flush=True)
