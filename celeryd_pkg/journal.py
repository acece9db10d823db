"""The worker's log lines in the journal, each with the task it speaks of.

Under systemd the worker's stderr is a journal stream: lines arrive as plain text, and a
traceback as many entries. When that is so, `install` hands each of Celery's stderr log
handlers over to one that sends through journald's native protocol (python3-systemd): one
entry per record, with the fields CELERY_TASK_ID, CELERY_TASK_NAME and CELERY_TASK_STATE
on every line about one task, so that `journalctl CELERY_TASK_ID=ID` finds it on a host
(`celeryd-admin trace ID` reads them). The message text stays what Celery writes.
"""

import functools
import logging
import os
import sys

__all__ = ["IDENTIFIER", "state_of_format", "install", "journal_is_stderr", "task_fields",
           "task_extra", "TaskJournalHandler"]

# The identifier journalctl shows (and -t matches) for the worker's lines.
IDENTIFIER = "celery-worker"


@functools.cache
def state_of_format():
    """Celery's task log formats (celery.app.trace), each with the Celery state it reports:
    the trace logs a task's end with one of them and the task's id and name as its args."""
    from celery.app import trace

    formats = {trace.LOG_RECEIVED: "RECEIVED", trace.LOG_SUCCESS: "SUCCESS",
               trace.LOG_FAILURE: "FAILURE", trace.LOG_INTERNAL_ERROR: "FAILURE",
               trace.LOG_RETRY: "RETRY", trace.LOG_IGNORED: "IGNORED",
               trace.LOG_REJECTED: "REJECTED"}
    # Celery logs some of them stripped of their newline, some not.
    return {text.strip(): state for text, state in formats.items()}


def task_extra(task_id, name, state):
    """The `extra=` for a celeryd log line about one task (poison.py's lines)."""
    return {"celery_task": (task_id, name, state)}


def task_fields(record):
    """Given a log record, return its CELERY_TASK_* journal fields ({} for a line about no
    task): Celery's own task lines name the task in their args; a line logged while a task
    runs (the task's code, its print()s) belongs to that task."""
    named = getattr(record, "celery_task", None)
    if named is None and isinstance(record.args, dict) and isinstance(record.msg, str):
        state = state_of_format().get(record.msg.strip())
        if state and "id" in record.args:
            named = (record.args["id"], record.args.get("name"), state)
    if named is None:
        from celery._state import get_current_worker_task

        task = get_current_worker_task()
        if task is not None and task.request.id:
            named = (task.request.id, task.name, "STARTED")
    if named is None:
        return {}
    task_id, name, state = named
    return {"CELERY_TASK_ID": str(task_id), "CELERY_TASK_NAME": str(name or ""),
            "CELERY_TASK_STATE": state}


class TaskJournalHandler(logging.Handler):
    """Sends each record to journald as one entry: the formatted text (traceback included),
    its priority, logger and process, and the task fields. Nothing else of the record goes
    along: Celery's records carry the task's arguments, which stay out of the journal as
    they stay out of the text."""

    def __init__(self, level, send):
        from systemd.journal import JournalHandler

        super().__init__(level)
        self.send = send
        self.priority = JournalHandler.map_priority  # looked up once, not per line

    def emit(self, record):
        try:
            self.send(self.format(record), PRIORITY=str(self.priority(record.levelno)),
                      SYSLOG_IDENTIFIER=IDENTIFIER, LOGGER=record.name,
                      PROCESS_NAME=record.processName, CODE_FILE=record.pathname,
                      CODE_LINE=record.lineno, CODE_FUNC=record.funcName,
                      **task_fields(record))
        except Exception:  # noqa: BLE001 - logging must never take the worker down
            self.handleError(record)


def journal_is_stderr(environ=os.environ, stderr=None):
    """True when stderr is the journal stream systemd connected (JOURNAL_STREAM, the
    documented check: its "device:inode" is stderr's)."""
    stream = environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat((stderr or sys.__stderr__).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def install(make_handler=TaskJournalHandler):
    """When stderr is the journal, replace every stderr handler Celery set up (the root
    logger's, the task logger's, multiprocessing's) by a journal handler with the same level
    and formatter. Call after Celery set up logging and before the pool forks: the children
    inherit the handlers. Return how many were replaced."""
    if not journal_is_stderr():
        return 0
    try:
        from systemd.journal import send  # python3-systemd, a Depends of celeryd
    except ImportError:
        return 0
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)]
    replaced = 0
    for logger in loggers:
        for index, handler in enumerate(list(logger.handlers)):
            if type(handler) is logging.StreamHandler and handler.stream in (
                    sys.stderr, sys.__stderr__):
                journal = make_handler(handler.level, send)
                journal.setFormatter(handler.formatter)
                logger.handlers[index] = journal
                replaced += 1
    return replaced
