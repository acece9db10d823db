"""Drain before maintenance: a drained worker takes no new tasks, finishes those in flight,
says so in STATUS=, and `resume` brings it back; nothing is lost."""

import json
import shutil
import subprocess
import time

import pytest

from celeryd_pkg import broker, config
from tests.integration.conftest import PYTHON, clean_env, submit, write_config
from tests.integration.test_admin import admin

pytestmark = pytest.mark.integration


def waiting_in_queue(config_file, queue="celery"):
    connection = broker.connect(config.load(config_file, env={}))
    try:
        return connection.channel().queue_declare(queue, passive=True).message_count
    finally:
        connection.close()


def test_drain_lets_the_task_in_flight_finish_takes_no_new_one_and_resume_undoes_it(
        rabbitmq, config_file, start_worker):
    worker = start_worker(config_file, "--instance", "maint")
    in_flight = subprocess.Popen(
        [PYTHON, "-m", "celeryd_pkg.submit", "--config", str(config_file), "--json", "sleep",
         "3"], env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker.wait_for(", 1 in flight", timeout=30)

    drained = admin(rabbitmq, "drain", "maint", "--config", str(config_file))
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.startswith("maint@") and "draining: no new tasks from celery" in \
        drained.stdout
    status = worker.wait_for("STATUS=Draining", timeout=10)
    assert "1 in flight" in status

    queued = submit(config_file, "echo", "later", "--no-wait")
    assert queued.returncode == 0
    out, err = in_flight.communicate(timeout=60)
    assert json.loads(out)["result"] == 3  # the task in flight finished normally
    time.sleep(2)
    assert waiting_in_queue(config_file) == 1  # ... and the new one was not taken

    resumed = admin(rabbitmq, "resume", "maint", "--config", str(config_file))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.endswith("consuming from celery again\n")
    worker.wait_for("STATUS=Consuming from celery", timeout=10)
    deadline = time.monotonic() + 30
    while waiting_in_queue(config_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert waiting_in_queue(config_file) == 0
    assert submit(config_file, "add", "4", "4").stdout == "8\n"


def test_drain_of_a_worker_that_is_not_running_exits_1_with_one_line(rabbitmq, config_file):
    result = admin(rabbitmq, "drain", "nobody", "--config", str(config_file))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "did not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_drain_resume_and_inspect_import_no_task_code(rabbitmq, config_file, start_worker,
                                                            tmp_path):
    # The worker runs with a healthy config; the admin's config names a task module that
    # raises on import, and the control-only app must never import it.
    start_worker(config_file, "--instance", "ctl")
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "boom.py").write_text("raise RuntimeError('operator code ran')\n")
    broken = tmp_path / "admin-etc"
    shutil.copytree(config_file.parent, broken)
    with open(broken / "celeryd.yaml", "a") as f:
        f.write(f"tasks:\n  modules: [boom]\n  pythonpath: ['{code_dir}']\n")

    checked = admin(rabbitmq, "check", "--config", str(broken / "celeryd.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK   workers: 1 consuming queue 'celery': ctl@" in checked.stdout
    for command in ("drain", "resume"):
        result = admin(rabbitmq, command, "ctl", "--config", str(broken / "celeryd.yaml"))
        assert result.returncode == 0, result.stderr
        assert "operator code ran" not in result.stdout + result.stderr
    inspected = subprocess.run(
        [PYTHON, "-m", "celery", "-A", "celeryd_pkg.admin.control", "inspect", "ping",
         "--timeout", "5"], env=clean_env(CELERYD_CONFIG=str(broken / "celeryd.yaml")),
        capture_output=True, text=True, timeout=60, cwd="/")
    assert inspected.returncode == 0, inspected.stderr
    assert "pong" in inspected.stdout and "operator code ran" not in inspected.stderr
    # ...whereas the worker's own app does import it, and says so.
    worker_app = subprocess.run(
        [PYTHON, "-c", "import celeryd_pkg.app as a; a.app"],
        env=clean_env(CELERYD_CONFIG=str(broken / "celeryd.yaml")), capture_output=True,
        text=True, timeout=60, cwd="/")
    assert "cannot import 'boom'" in worker_app.stderr


def test_check_names_only_the_workers_that_consume_the_client_queue(
        rabbitmq, account, config_file, start_worker, tmp_path):
    start_worker(config_file, "--instance", "main")
    other = write_config(tmp_path / "other-etc", rabbitmq, account,
                         "worker:\n  queues: [elsewhere]\n")
    start_worker(other, "--instance", "side")
    checked = admin(rabbitmq, "check", "--config", str(config_file))
    assert checked.returncode == 0, checked.stdout
    workers = checked.stdout.splitlines()[-1]
    assert workers.startswith("OK   workers: 1 consuming queue 'celery': main@"), workers
    assert "side@" not in workers
