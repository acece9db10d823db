"""Task counts from real workers: the celeryd_status reply over a real broadcast, and the
Prometheus endpoint scraped over HTTP and parsed with prometheus_client's own parser."""

import os
import signal
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celeryd_pkg import config
from celeryd_pkg.app import make_control_app
from tests.integration.broker import free_port
from tests.integration.conftest import submit, vhost_account, write_config

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
NODE = f"celery@{HOST}"
ADDS, FAILURES = 5, 2


@pytest.fixture(scope="module")
def own_account(rabbitmq):
    """A vhost of this module's own: no other test's messages or workers in the counts."""
    return vhost_account(rabbitmq, "celeryd-metrics")


def metrics_config(tmp_path, rabbitmq, account, enabled=True, port=None, extra=""):
    port = port or free_port()
    extra += f"metrics:\n  enabled: {str(enabled).lower()}\n  listen: 127.0.0.1:{port}\n"
    return write_config(tmp_path / "etc", rabbitmq, account, extra), port


def eventually(probe, timeout=30):  # -> probe's last value, true unless timeout passed
    deadline = time.monotonic() + timeout
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def scrape(port):
    """Return {(sample name, sorted labels): value} from http://127.0.0.1:port/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(samples, name):
    return sum(value for (sample, _), value in samples.items() if sample == name)


def status(config_file, timeout=3.0):
    """Broadcast celeryd_status from the control-only app; return {node: reply}."""
    app = make_control_app(config.load(str(config_file), env={}))
    try:
        replies = app.control.broadcast("celeryd_status", reply=True, timeout=timeout, limit=1)
    finally:
        app.close()
    return {node: reply for answer in replies for node, reply in answer.items()}


def pool_children(pid):
    """The pids whose parent is pid, from /proc/*/stat (no psutil)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def listening_pids(pids):
    """The pids among pids that hold a TCP socket in the LISTEN state (0A in /proc/net)."""
    listening = {f"socket:[{line.split()[9]}]" for table in ("/proc/net/tcp", "/proc/net/tcp6")
                 for line in Path(table).read_text().splitlines()[1:] if line.split()[3] == "0A"}

    def target(fd):
        try:
            return os.readlink(fd)
        except OSError:
            return ""
    return [pid for pid in pids
            if any(target(fd) in listening for fd in Path(f"/proc/{pid}/fd").iterdir())]


def count_directories(pid):  # the worker has our environment: our temporary directory
    return sorted(Path(tempfile.gettempdir()).glob(f"celeryd-metrics-{pid}-*"))


def run_tasks(config_file, adds=ADDS, failures=FAILURES):
    for n in range(adds):
        assert submit(config_file, "add", str(n), "1").stdout == f"{n + 1}\n"
    for _ in range(failures):
        assert submit(config_file, "xsum", '["a", 1]').returncode == 1


def test_status_reply_and_scrape_count_the_tasks_run(tmp_path, rabbitmq, own_account,
                                                     start_worker):
    config_file, port = metrics_config(tmp_path, rabbitmq, own_account)
    worker = start_worker(config_file)
    run_tasks(config_file)

    replies = status(config_file)
    assert list(replies) == [NODE]
    reply = replies[NODE]
    assert (reply["received"], reply["succeeded"], reply["failed"], reply["retried"]) == (
        ADDS + FAILURES, ADDS, FAILURES, 0)
    assert reply["pid"] == worker.proc.pid and reply["instance"] is None
    assert reply["active"] == reply["held"] == 0 and reply["held_by_queue"] == {}
    assert reply["queues"] == reply["configured_queues"] == ["celery"]
    assert reply["draining"] is False and reply["concurrency"] == 2

    samples = scrape(port)
    labels = (("hostname", HOST), ("name", "celeryd.add"), ("queue_name", "celery"))
    assert samples[("celery_task_received_total", labels)] == ADDS
    assert samples[("celery_task_started_total", labels)] == ADDS
    assert samples[("celery_task_succeeded_total", labels)] == ADDS
    assert samples[("celery_task_retried_total", labels)] == 0
    assert samples[("celery_task_runtime_count", labels)] == ADDS
    assert samples[("celery_task_runtime_bucket", labels[:1] + (("le", "+Inf"),) + labels[1:])
                   ] == ADDS
    failed = (("exception", "TypeError"), ("hostname", HOST), ("name", "celeryd.xsum"),
              ("queue_name", "celery"))
    assert samples[("celery_task_failed_total", failed)] == FAILURES
    # The results went back on direct reply-to: no task published by the worker itself.
    assert total(samples, "celery_task_sent_total") == 0
    assert samples[("celery_worker_up", (("hostname", HOST),))] == 1
    assert samples[("celery_worker_tasks_active", (("hostname", HOST),))] == 0
    assert samples[("celery_queue_length", (("queue_name", "celery"),))] == 0


def test_a_killed_pool_child_takes_no_count_with_it(tmp_path, rabbitmq, own_account,
                                                    start_worker):
    config_file, port = metrics_config(tmp_path, rabbitmq, own_account)
    worker = start_worker(config_file)
    run_tasks(config_file)
    # Kill a child that counted tasks: its counter file is in the worker's directory.
    directory, = count_directories(worker.proc.pid)
    victim = [pid for pid in pool_children(worker.proc.pid)
              if (directory / f"counter_{pid}.db").exists()][0]
    counted = {key: value for key, value in scrape(port).items()
               if key[0].endswith(("_total", "_count", "_sum", "_bucket"))}
    assert total(counted, "celery_task_succeeded_total") == ADDS

    os.kill(victim, signal.SIGKILL)  # between tasks: nothing in flight
    def replaced():
        now = pool_children(worker.proc.pid)
        return len(now) == 2 and victim not in now
    assert eventually(replaced), f"the pool did not replace child {victim}"

    after = scrape(port)
    assert {key: (value, after.get(key)) for key, value in counted.items()
            if after.get(key, -1) < value} == {}
    assert status(config_file)[NODE]["succeeded"] == ADDS

    run_tasks(config_file, adds=4, failures=1)
    later = scrape(port)
    assert total(later, "celery_task_succeeded_total") == ADDS + 4
    assert total(later, "celery_task_failed_total") == FAILURES + 1
    assert total(later, "celery_task_received_total") == ADDS + FAILURES + 5
    assert status(config_file)[NODE]["received"] == ADDS + FAILURES + 5


def test_only_the_main_process_listens_and_disabled_metrics_open_no_port(
        tmp_path, rabbitmq, own_account, start_worker):
    on_file, on_port = metrics_config(tmp_path / "on", rabbitmq, own_account)
    on = start_worker(on_file)
    # Pool children close the inherited listening socket: only the main process holds it.
    on_pids = [on.proc.pid] + pool_children(on.proc.pid)
    assert len(on_pids) == 3 and listening_pids(on_pids) == [on.proc.pid]
    on.close()

    off_file, off_port = metrics_config(tmp_path / "off", rabbitmq, own_account, enabled=False)
    off = start_worker(off_file, "--instance", "quiet")
    assert listening_pids([off.proc.pid] + pool_children(off.proc.pid)) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", off_port), timeout=2).close()
    # Counting goes on without the endpoint: celeryd-admin status needs it.
    assert submit(off_file, "add", "2", "2").stdout == "4\n"
    reply = status(off_file)[f"quiet@{HOST}"]
    assert reply["instance"] == "quiet" and reply["succeeded"] == 1


def test_a_port_in_use_leaves_the_worker_serving_tasks_without_metrics(
        tmp_path, rabbitmq, own_account, start_worker):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        config_file, _ = metrics_config(tmp_path, rabbitmq, own_account, port=port)
        worker = start_worker(config_file)  # READY=1 all the same
        assert submit(config_file, "add", "3", "4").stdout == "7\n"
        assert [line.split("] ", 1)[1] for line in worker.output().splitlines()
                if "] metrics: " in line] == [
            f"metrics: cannot listen on 127.0.0.1:{port} (metrics.listen): Address already in "
            f"use; the worker runs without metrics"]
    finally:
        taken.close()


def test_a_reload_starts_fresh_counts_leaks_no_directory_and_serves_again(
        tmp_path, rabbitmq, own_account, start_worker):
    config_file, port = metrics_config(tmp_path, rabbitmq, own_account)
    worker = start_worker(config_file)
    pid = worker.proc.pid
    assert len(first := count_directories(pid)) == 1
    assert submit(config_file, "add", "1", "1").stdout == "2\n"
    assert total(scrape(port), "celery_task_succeeded_total") == 1

    os.kill(pid, signal.SIGHUP)
    worker.wait_for("READY=1", timeout=30)
    assert worker.proc.pid == pid  # re-executed in place
    assert len(second := count_directories(pid)) == 1 and second != first  # old one removed
    assert submit(config_file, "add", "1", "1").stdout == "2\n"
    assert total(scrape(port), "celery_task_succeeded_total") == 1  # a counter reset

    worker.stop()
    assert count_directories(pid) == []


OPERATOR_TASKS = """from celery import Task, shared_task

class Audited(Task):  # an operator's own base class: counting must not depend on Celery's
    def __call__(self, *args, **kwargs):
        return super().__call__(*args, **kwargs)

@shared_task(name="ops.noop", base=Audited, ignore_result=True)
def noop():
    return None

@shared_task(name="ops.fanout", base=Audited)
def fanout(count):
    for _ in range(count):
        noop.delay()
    return count

@shared_task(name="ops.flaky", base=Audited, bind=True)
def flaky(self):
    if self.request.retries < 1:
        raise self.retry(countdown=0)
    return "ok"
"""


def test_tasks_a_task_publishes_count_as_sent_and_custom_base_classes_count(
        tmp_path, rabbitmq, own_account, start_worker):
    (code := tmp_path / "code").mkdir()
    (code / "celeryd_test_ops.py").write_text(OPERATOR_TASKS)
    config_file, port = metrics_config(
        tmp_path, rabbitmq, own_account,
        extra=f"tasks:\n  modules: [celeryd_test_ops]\n  pythonpath: ['{code}']\n")
    start_worker(config_file)
    assert submit(config_file, "ops.fanout", "3").stdout == "3\n"
    noop = (("hostname", HOST), ("name", "ops.noop"), ("queue_name", "celery"))
    assert eventually(lambda: scrape(port).get(("celery_task_succeeded_total", noop)) == 3)
    samples = scrape(port)
    assert samples[("celery_task_sent_total", noop)] == 3
    assert samples[("celery_task_received_total", noop)] == 3
    assert samples[("celery_task_succeeded_total", noop)] == 3
    fanout = (("hostname", HOST), ("name", "ops.fanout"), ("queue_name", "celery"))
    assert samples[("celery_task_succeeded_total", fanout)] == 1

    # A retry: counted as retried, its new message as sent, received and started again.
    assert submit(config_file, "ops.flaky").stdout == "ok\n"
    samples = scrape(port)
    flaky = (("hostname", HOST), ("name", "ops.flaky"), ("queue_name", "celery"))
    assert [samples[(name, flaky)] for name in (
        "celery_task_sent_total", "celery_task_received_total", "celery_task_started_total",
        "celery_task_retried_total", "celery_task_succeeded_total")] == [1, 2, 2, 1, 1]
    reply = status(config_file)[NODE]
    assert (reply["received"], reply["succeeded"], reply["retried"]) == (1 + 3 + 2, 1 + 3 + 1, 1)


def test_held_counts_running_and_reserved_messages_by_queue(
        tmp_path, rabbitmq, own_account, start_worker):
    # Prefetch 2: each child may reserve a second message beside the one it runs.
    config_file, _ = metrics_config(tmp_path, rabbitmq, own_account,
                                    extra="worker:\n  prefetch_multiplier: 2\n")
    start_worker(config_file)
    for _ in range(3):
        assert submit(config_file, "sleep", "3", "--no-wait").returncode == 0
    def busy():
        reply = status(config_file)[NODE]
        return (reply["active"], reply["held"], reply["held_by_queue"]) == (2, 3, {"celery": 3})
    # Two children run one each; the third message waits, reserved, for a free child.
    assert eventually(busy, 10), status(config_file)
    # Let them finish: a message left in the queue would be another test's task.
    assert eventually(lambda: status(config_file)[NODE]["succeeded"] == 3)
