"""Task counts, summed over the worker's main process and every prefork child.

prometheus_client's multiprocess mode: each process writes its counters to its own mmap file
in one private directory (PROMETHEUS_MULTIPROC_DIR) and a reader sums the files. A child that
dies leaves its file behind, so no count goes backwards when Celery replaces it.

Where each count is made: `received` in the main process (task_received: the consumer got the
message); `started`, `succeeded`, `failed`, `retried` and the runtime in the child that runs
the task (trace signals); `failed` also in the main process when the child could not report
(hard time limit); `sent` wherever a task is published (chain steps from a child). Celery's
signals fire for every task, whatever its base class. Names and labels are
danihodovic/celery-exporter's, so its dashboards and alerts work unchanged.
"""

import atexit
import logging
import os
import shutil
import socket
import sys
import tempfile
import time

__all__ = ["ENV", "prepare_directory", "directory", "install", "totals", "hostname",
           "host_label", "queue_label", "exception_label", "METRICS"]

logger = logging.getLogger("celeryd.tally")

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "celeryd-metrics-"
TASK_LABELS = ("name", "hostname", "queue_name")
# celery-exporter's counters: (metric name without _total, help, extra label).
COUNTERS = {
    "sent": ("celery_task_sent", "Sent when a task message is published."),
    "received": ("celery_task_received", "Sent when the worker receives a task."),
    "started": ("celery_task_started", "Sent just before the worker executes the task."),
    "succeeded": ("celery_task_succeeded", "Sent if the task executed successfully."),
    "failed": ("celery_task_failed", "Sent if the execution of the task failed."),
    "retried": ("celery_task_retried",
                "Sent if the task failed, but will be retried in the future."),
}
# The counts the celeryd_status reply carries.
STATUS_COUNTS = ("received", "succeeded", "failed", "retried")

METRICS = {}  # "received" -> Counter, ..., "runtime" -> Histogram; filled by install()
_labels = {"hostname": socket.gethostname(), "queue": "celery"}
_started_at = {}  # task id -> monotonic time of task_prerun, in the child running it
_lock = {}  # the open descriptor that holds the directory's lock


def prepare_directory():
    """Give this worker a fresh private directory for the counts, removed at exit, and return
    it. Must run before prometheus_client is first imported: it picks its storage then. A
    directory of ours inherited through exec (a SIGHUP reload) is removed first: the counts
    restart, as after any restart."""
    inherited = os.environ.get(ENV)
    if inherited and _made_by_this_process(inherited):
        shutil.rmtree(inherited, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.environ[ENV] = path
    atexit.register(_remove_directory, path, os.getpid())
    _keep_from_tmpfiles(path)
    return path


def _keep_from_tmpfiles(path):
    """systemd-tmpfiles ages files in /tmp (Debian 13: after 10 days) and skips a directory
    someone holds a BSD lock on (tmpfiles.d(5)): an idle worker's counts must not vanish.
    The descriptor stays open for the life of the process (an exec closes it)."""
    import fcntl

    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    previous = _lock.get("descriptor")
    if previous is not None:
        os.close(previous)
    _lock["descriptor"] = descriptor


def _made_by_this_process(path):
    """True for a directory prepare_directory made in this process before an exec (the pid
    stays): one made by a parent (say a test runner) is left alone."""
    return (os.path.dirname(os.path.abspath(path)) == tempfile.gettempdir()
            and os.path.basename(path).startswith(f"{PREFIX}{os.getpid()}-"))


def _remove_directory(path, owner):
    # Pool children share our atexit list: only the process that made it removes it.
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def directory():
    """Return the counts' directory, or None when this process has none."""
    path = os.environ.get(ENV)
    return path if path and os.path.isdir(path) else None


def hostname():
    """This worker's hostname label (the host part of its node name)."""
    return _labels["hostname"]


def host_label(node):
    """celery-exporter's hostname label: the host part of a node name (celery@host1 ->
    host1), so every worker of one host shares it, as in its dashboards."""
    return node.split("@", 1)[1] if "@" in node else node


def queue_label(delivery_info, default):
    """The queue a task came from: its routing key (each queue has its own direct exchange
    and routing key, settings.task_queues), else the default queue."""
    return (delivery_info or {}).get("routing_key") or default


def exception_label(exception):
    """celery-exporter's exception label: the exception's class name."""
    return type(exception).__name__ if exception is not None else "UnknownException"


def install(config):
    """Create the metrics and connect the signal handlers that count. Called in the worker's
    main process before the pool forks, so the children inherit both."""
    from celery import signals

    if ENV not in os.environ:
        if "prometheus_client" in sys.modules:
            logger.warning("prometheus_client was imported before %s was set: the pool "
                           "children's task counts are not seen", ENV)
        else:
            prepare_directory()
    _labels["queue"] = config.worker.queues[0]
    _create_metrics()
    for signal, handler in ((signals.celeryd_after_setup, _on_setup),
                            (signals.task_received, _on_received),
                            (signals.task_prerun, _on_prerun),
                            (signals.task_success, _on_success),
                            (signals.task_failure, _on_failure),
                            (signals.task_retry, _on_retry),
                            (signals.task_postrun, _on_postrun),
                            (signals.after_task_publish, _on_published)):
        signal.connect(handler, weak=False, dispatch_uid=f"celeryd.tally.{handler.__name__}")


def _create_metrics():
    if METRICS:
        return
    from prometheus_client import Counter, Histogram

    # No registry: MultiProcessCollector reads the files; the default one is not served.
    for key, (name, help_text) in COUNTERS.items():
        labels = TASK_LABELS + (("exception",) if key == "failed" else ())
        METRICS[key] = Counter(name, help_text, labels, registry=None)
    METRICS["runtime"] = Histogram("celery_task_runtime",
                                   "Histogram of task runtime measurements.", TASK_LABELS,
                                   registry=None, buckets=Histogram.DEFAULT_BUCKETS)


def _task_labels(name, delivery_info):
    return {"name": name or "unknown", "hostname": _labels["hostname"],
            "queue_name": queue_label(delivery_info, _labels["queue"])}


def _on_setup(sender=None, **_):
    # celeryd_after_setup: the node name is final (-n, worker.name, an instance's NAME@host).
    if sender:
        _labels["hostname"] = host_label(str(sender))


def _on_received(request=None, **_):
    labels = _task_labels(request.name, request.delivery_info)
    METRICS["received"].labels(**labels).inc()
    # As celery-exporter does: every series of the task exists from its first delivery, so
    # rate() and alerts see 0, not "no data".
    for key in ("started", "succeeded", "retried"):
        METRICS[key].labels(**labels).inc(0)
    METRICS["failed"].labels(exception="", **labels).inc(0)


def _request_of(task, task_id=None):
    """The request being run: the task's own in a child; in the main process (a failure the
    child could not report) the worker's record of it."""
    request = getattr(task, "request", None)
    if request is not None and (task_id is None or getattr(request, "id", None) == task_id):
        return request
    from celery.worker import state

    return state.requests.get(task_id) if hasattr(state, "requests") else None


def _labels_of(task, task_id=None):
    request = _request_of(task, task_id)
    return _task_labels(getattr(task, "name", None), getattr(request, "delivery_info", None))


def _on_prerun(sender=None, task_id=None, **_):
    METRICS["started"].labels(**_labels_of(sender)).inc()
    _started_at[task_id] = time.monotonic()


def _on_success(sender=None, **_):
    labels = _labels_of(sender)
    METRICS["succeeded"].labels(**labels).inc()
    started = _started_at.pop(getattr(sender.request, "id", None), None)
    # celery-exporter observes the runtime of succeeded tasks only.
    if started is not None:
        METRICS["runtime"].labels(**labels).observe(time.monotonic() - started)


def _on_failure(sender=None, task_id=None, exception=None, **_):
    labels = _labels_of(sender, task_id)
    METRICS["failed"].labels(exception=exception_label(exception), **labels).inc()


def _on_retry(sender=None, request=None, **_):
    labels = _task_labels(getattr(sender, "name", None), getattr(request, "delivery_info", None))
    METRICS["retried"].labels(**labels).inc()


def _on_postrun(task_id=None, **_):
    _started_at.pop(task_id, None)


def _on_published(sender=None, routing_key=None, headers=None, **_):
    name = (headers or {}).get("task") or sender
    METRICS["sent"].labels(name=str(name), hostname=_labels["hostname"],
                           queue_name=routing_key or _labels["queue"]).inc()


def totals(path=None):
    """Return {"received": n, "succeeded": n, "failed": n, "retried": n}: every process's
    counts summed (0 where nothing was counted)."""
    counts = dict.fromkeys(STATUS_COUNTS, 0)
    path = path or directory()
    if path is None:
        return counts
    wanted = {COUNTERS[key][0] + "_total": key for key in STATUS_COUNTS}
    for metric in collect_files(path):
        for sample in metric.samples:
            key = wanted.get(sample.name)
            if key:
                counts[key] += int(sample.value)
    return counts


def collect_files(path):
    """Return the merged metrics of every process's file in path."""
    import glob

    from prometheus_client.multiprocess import MultiProcessCollector

    return MultiProcessCollector.merge(glob.glob(os.path.join(path, "*.db")), accumulate=True)
