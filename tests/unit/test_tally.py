"""Task counts: labels as celery-exporter's, the private directory, sums over forked children."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from celeryd_pkg import tally

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("node, expected", [
    ("celery@host1", "host1"), ("reports@host1.example.org", "host1.example.org"),
    ("a@b@c", "b@c"), ("plainhost", "plainhost"),
])
def test_the_hostname_label_is_the_host_part_of_the_node_name(node, expected):
    assert tally.host_label(node) == expected


def test_the_queue_label_is_the_routing_key_else_the_default_queue():
    assert tally.queue_label({"routing_key": "mail", "exchange": "mail"}, "celery") == "mail"
    assert tally.queue_label({"exchange": ""}, "celery") == "celery"
    assert tally.queue_label(None, "jobs") == "jobs"


def test_the_exception_label_is_the_class_name():
    assert tally.exception_label(TypeError("x")) == "TypeError"
    assert tally.exception_label(None) == "UnknownException"


def run_python(code, env=None, timeout=60):
    """Run code in a fresh interpreter (prometheus_client picks its storage at import)."""
    result = subprocess.run(["/usr/bin/python3", "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_directory_is_made_private_and_removed_when_its_process_exits():
    found = json.loads(run_python(
        "import fcntl, json, os, stat\n"
        "from celeryd_pkg import tally\n"
        "path = tally.prepare_directory()\n"
        "other = os.open(path, os.O_RDONLY)\n"
        "try:\n"
        "    fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)\n"
        "    locked = False\n"
        "except BlockingIOError:\n"
        "    locked = True\n"
        "print(json.dumps([path, os.environ[tally.ENV] == path,\n"
        "                  stat.S_IMODE(os.stat(path).st_mode), locked]))\n"))
    path, exported, mode, locked = found
    assert exported and mode == 0o700
    # systemd-tmpfiles skips a locked directory: its age cleanup cannot take the counts.
    assert locked
    assert os.path.basename(path).startswith(tally.PREFIX)
    assert not os.path.exists(path)


def test_a_child_forked_later_does_not_remove_its_parents_directory():
    code = ("import os\n"
            "from celeryd_pkg import tally\n"
            "path = tally.prepare_directory()\n"
            "if os.fork() == 0:\n"
            "    raise SystemExit(0)\n"  # runs the atexit handlers, as a plain exit would
            "os.wait()\n"
            "print(os.path.isdir(path))\n")
    assert run_python(code).strip() == "True"


def test_an_exec_of_the_same_process_removes_the_directory_it_inherited(tmp_path):
    # SIGHUP re-executes the worker (same pid): the old directory must not leak.
    script = tmp_path / "reexec.py"
    script.write_text(
        "import os, sys\n"
        "from celeryd_pkg import tally\n"
        "if len(sys.argv) == 1:\n"
        "    path = tally.prepare_directory()\n"
        "    os.execv(sys.executable, [sys.executable, __file__, path])\n"
        "new = tally.prepare_directory()\n"
        "print(os.path.exists(sys.argv[1]), os.path.isdir(new), sys.argv[1] != new)\n")
    result = subprocess.run(["/usr/bin/python3", str(script)], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]


def test_a_directory_made_by_another_process_is_left_alone():
    foreign = tempfile.mkdtemp(prefix=f"{tally.PREFIX}1-")
    try:
        env = dict(os.environ, **{tally.ENV: foreign})
        run_python("from celeryd_pkg import tally\ntally.prepare_directory()\n", env=env)
        assert os.path.isdir(foreign)
    finally:
        os.rmdir(foreign)


COUNTING = """
import json, os, signal, sys, types
from celeryd_pkg import tally
tally.prepare_directory()
tally.install(types.SimpleNamespace(worker=types.SimpleNamespace(queues=["jobs"])))
tally._on_setup(sender="celery@box")

def request(queue):
    return types.SimpleNamespace(name="celeryd.add", delivery_info={"routing_key": queue})

def task(task_id, queue):
    return types.SimpleNamespace(name="celeryd.add",
                                 request=types.SimpleNamespace(id=task_id, **vars(request(queue))))

for n in range(3):
    tally._on_received(request=request("mail"))
before = tally.totals()
# A pool child runs two tasks, one fails, then is killed with SIGKILL: its counts stay.
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    t = task("t1", "mail")
    tally._on_prerun(sender=t, task_id="t1"); tally._on_success(sender=t)
    t = task("t2", "mail")
    tally._on_prerun(sender=t, task_id="t2")
    tally._on_failure(sender=t, task_id="t2", exception=TypeError("no"))
    tally._on_retry(sender=t, request=t.request)
    os.write(write, b"x")
    signal.pause()
os.read(read, 1)
alive = tally.totals()
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
dead = tally.totals()
samples = {}
for metric in tally.collect_files(tally.directory()):
    for sample in metric.samples:
        key = sample.name + json.dumps(sample.labels, sort_keys=True)
        samples[key] = sample.value
print(json.dumps({"before": before, "alive": alive, "dead": dead, "samples": samples}))
"""


def test_counts_of_a_killed_child_are_kept_and_summed_with_the_main_processes():
    found = json.loads(run_python(COUNTING))
    assert found["before"] == {"received": 3, "succeeded": 0, "failed": 0, "retried": 0}
    assert found["alive"] == {"received": 3, "succeeded": 1, "failed": 1, "retried": 1}
    assert found["dead"] == found["alive"]
    labels = '{"hostname": "box", "name": "celeryd.add", "queue_name": "mail"}'
    samples = found["samples"]
    assert samples["celery_task_received_total" + labels] == 3
    assert samples["celery_task_started_total" + labels] == 2
    assert samples["celery_task_succeeded_total" + labels] == 1
    assert samples["celery_task_retried_total" + labels] == 1
    failed = ('{"exception": "TypeError", "hostname": "box", "name": "celeryd.add", '
              '"queue_name": "mail"}')
    assert samples["celery_task_failed_total" + failed] == 1
    # Every series exists from the first delivery, as celery-exporter makes them.
    zero = ('{"exception": "", "hostname": "box", "name": "celeryd.add", '
            '"queue_name": "mail"}')
    assert samples["celery_task_failed_total" + zero] == 0
    assert samples["celery_task_runtime_count" + labels] == 1


EAGER = """
import json, sys
from celery import Task, shared_task
from celeryd_pkg import app, config, tally

class Audited(Task):
    def __call__(self, *args, **kwargs):
        return super().__call__(*args, **kwargs)

@shared_task(name="ops.audited", base=Audited)
def audited(x):
    return x

worker = app.make_app(config.load(sys.argv[1], env={}))
worker.conf.task_always_eager = True
worker.tasks["celeryd.add"].delay(1, 2)
worker.tasks["celeryd.xsum"].delay(["a", 1])
worker.tasks["ops.audited"].delay(5)
found = {}
for metric in tally.collect_files(tally.directory()):
    for sample in metric.samples:
        if sample.name.endswith("_total") and sample.value:
            found.setdefault(sample.name, {})[sample.labels["name"]] = sample.value
print(json.dumps([found, tally.totals()]))
"""


def test_celerys_signals_count_built_in_tasks_and_an_operators_custom_base_class(tmp_path):
    main = tmp_path / "celeryd.yaml"
    main.write_text("worker:\n  queues: [jobs]\n")
    result = subprocess.run(["/usr/bin/python3", "-c", EAGER, str(main)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found, totals = json.loads(result.stdout)
    assert found["celery_task_started_total"] == {
        "celeryd.add": 1, "celeryd.xsum": 1, "ops.audited": 1}
    assert found["celery_task_succeeded_total"] == {"celeryd.add": 1, "ops.audited": 1}
    assert found["celery_task_failed_total"] == {"celeryd.xsum": 1}
    assert totals == {"received": 0, "succeeded": 2, "failed": 1, "retried": 0}
