"""Journal fields of the worker's lines: which task a record speaks of, what is sent, when the
handlers are swapped. Real journald is in tests/system/test_multihost.py (journalctl
CELERY_TASK_ID=..., celeryd-admin trace)."""

import logging
import os
import sys

import pytest
from celery import Celery

from celeryd_pkg import journal


class Recorder(logging.Handler):
    """Keeps every record Celery's code logs with its task fields, taken when logged (as the
    journal handler does: a line logged in a task belongs to the task running then)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append((record.name, journal.task_fields(record)))


@pytest.fixture
def recorded():
    """(logger name, task fields) of what is logged while the test runs, INFO and up."""
    root, recorder = logging.getLogger(), Recorder()
    level = root.level
    root.addHandler(recorder)
    root.setLevel(logging.INFO)
    yield recorder.records
    root.removeHandler(recorder)
    root.setLevel(level)


@pytest.fixture(scope="module")
def app():
    app = Celery("journal-test", set_as_current=False)
    app.conf.task_store_eager_result = False

    @app.task(name="add")
    def add(x, y):
        logging.getLogger("tasks").info("adding %s and %s", x, y)
        return x + y

    @app.task(name="explode")
    def explode():
        raise ValueError("no")

    return app


def fields_of(records, logger_name):
    return [fields for name, fields in records if name == logger_name]


def test_celerys_success_line_and_the_tasks_own_line_name_the_task(app, recorded):
    result = app.tasks["add"].apply((2, 3), task_id="0f1e2d3c-aaaa-bbbb-cccc-000000000001")
    assert result.get() == 5
    by_task_code = fields_of(recorded, "tasks")
    assert by_task_code == [{"CELERY_TASK_ID": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
                             "CELERY_TASK_NAME": "add", "CELERY_TASK_STATE": "STARTED"}]
    by_trace = fields_of(recorded, "celery.app.trace")
    assert by_trace == [{"CELERY_TASK_ID": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
                         "CELERY_TASK_NAME": "add", "CELERY_TASK_STATE": "SUCCESS"}]


def test_celerys_failure_line_names_the_task_and_failure(app, recorded):
    app.tasks["explode"].apply(task_id="id-2")
    failures = [f for f in fields_of(recorded, "celery.app.trace") if f]
    assert failures == [{"CELERY_TASK_ID": "id-2", "CELERY_TASK_NAME": "explode",
                         "CELERY_TASK_STATE": "FAILURE"}]


def test_the_received_line_is_recognised_by_celerys_own_format():
    from celery.app import trace

    # Logged as celery.worker.strategy logs it: the format and the context as its one arg.
    context = {"id": "id-3", "name": "add", "args": "(1, 2)", "kwargs": "{}", "eta": None}
    record = logging.LogRecord("celery.worker.strategy", logging.INFO, __file__, 1,
                               trace.LOG_RECEIVED, (context,), None)
    assert journal.task_fields(record) == {
        "CELERY_TASK_ID": "id-3", "CELERY_TASK_NAME": "add", "CELERY_TASK_STATE": "RECEIVED"}


def test_a_line_about_no_task_has_no_task_fields():
    record = logging.LogRecord("celery.worker", logging.INFO, __file__, 1,
                               "Connected to %(url)s", ({"url": "amqp://x", "id": "y"},), None)
    assert journal.task_fields(record) == {}
    plain = logging.LogRecord("celeryd.worker", logging.WARNING, __file__, 1, "Reloading",
                              None, None)
    assert journal.task_fields(plain) == {}


def test_celeryds_own_lines_name_their_task_explicitly():
    record = logging.makeLogRecord({"msg": "lost", "levelno": logging.WARNING,
                                    **journal.task_extra("id-4", "hog", "REJECTED")})
    assert journal.task_fields(record)["CELERY_TASK_STATE"] == "REJECTED"
    assert journal.task_fields(record)["CELERY_TASK_ID"] == "id-4"


def test_the_handler_sends_the_text_and_fields_never_the_tasks_arguments():
    sent = []
    handler = journal.TaskJournalHandler(logging.INFO, lambda message, **fields: sent.append(
        (message, fields)))
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    secret = "s3cret-argument"
    context = {"id": "id-5", "name": "add", "runtime": 0.1, "return_value": "5",
               "args": repr((secret,)), "kwargs": "{}"}
    from celery.app import trace

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("celery.app.trace", logging.ERROR, __file__, 7,
                                   trace.LOG_SUCCESS, (context,), sys.exc_info())
    record.data = context
    handler.handle(record)
    ((message, fields),) = sent
    assert message.startswith("[ERROR] Task add[id-5] succeeded in 0.1s: 5")
    assert "ValueError: boom" in message  # the traceback is in the one entry
    assert fields["PRIORITY"] == "3" and fields["SYSLOG_IDENTIFIER"] == "celery-worker"
    assert fields["LOGGER"] == "celery.app.trace" and fields["CELERY_TASK_ID"] == "id-5"
    assert secret not in repr(fields)


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path):
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        status = os.fstat(stream.fileno())
        named = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert journal.journal_is_stderr(named, stream)
        assert not journal.journal_is_stderr(named, other)
        assert not journal.journal_is_stderr({}, stream)
        assert not journal.journal_is_stderr({"JOURNAL_STREAM": "x:y"}, stream)


@pytest.fixture
def celery_like_handlers():
    """A stderr handler on the root logger and on celery.task, as Celery's setup leaves them;
    restored afterwards."""
    root, task_logger = logging.getLogger(), logging.getLogger("celery.task")
    saved = (list(root.handlers), list(task_logger.handlers))
    formatter = logging.Formatter("%(message)s")
    for logger in (root, task_logger):
        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(formatter)
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
    yield root, task_logger, formatter
    root.handlers[:], task_logger.handlers[:] = saved


def test_install_swaps_every_stderr_handler_when_stderr_is_the_journal(
        monkeypatch, celery_like_handlers):
    root, task_logger, formatter = celery_like_handlers
    status = os.fstat(sys.__stderr__.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
    assert journal.install() >= 2
    for logger in (root, task_logger):
        swapped = [h for h in logger.handlers if isinstance(h, journal.TaskJournalHandler)]
        assert len(swapped) == 1
        assert swapped[0].formatter is formatter and swapped[0].level == logging.INFO
        assert not [h for h in logger.handlers if type(h) is logging.StreamHandler
                    and h.stream is sys.__stderr__]


def test_install_leaves_the_handlers_when_stderr_is_not_the_journal(
        monkeypatch, celery_like_handlers):
    root, task_logger, _ = celery_like_handlers
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    before = list(root.handlers)
    assert journal.install() == 0
    assert root.handlers == before
