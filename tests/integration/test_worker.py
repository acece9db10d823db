"""The worker as systemd sees it: READY/STATUS/WATCHDOG/STOPPING, reload, warm stop, broker loss."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.integration.broker import RabbitMQ
from tests.integration.conftest import (PYTHON, clean_env, run_module, submit, vhost_account,
                                       write_config)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    """A broker this module may stop and restart, with the same port each time."""
    node = RabbitMQ(tmp_path_factory.mktemp("own-rabbitmq"))
    account = {"user": "w", "password": "worker-test-pw", "vhost": "w"}
    try:
        node.start()
        node.add_account(account["user"], account["password"], account["vhost"])
        yield node, account
    finally:
        node.close()


def statuses(worker):
    return [line[len("STATUS="):] for message in worker.messages
            for line in message.split("\n") if line.startswith("STATUS=")]


def test_ready_comes_with_a_status_naming_queues_broker_and_concurrency(config_file, start_worker):
    worker = start_worker(config_file, "--concurrency", "3")
    ready = next(m for m in worker.messages if "READY=1" in m)
    status = ready.split("STATUS=", 1)[1]
    assert status.startswith("Consuming from celery on amqp://celeryd-test:***@127.0.0.1:")
    assert "concurrency 3; 0 tasks done, 0 in flight" in status
    # READY=1 means consuming: a task sent right now is taken at once.
    assert submit(config_file, "add", "1", "2", "--timeout", "5").stdout == "3\n"


def test_status_counts_tasks_done(config_file, start_worker):
    worker = start_worker(config_file)
    for n in range(3):
        assert submit(config_file, "add", str(n), "1").returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("3 tasks done" in s for s in statuses(worker)):
        worker.receive(1)
    assert any("3 tasks done, 0 in flight" in s for s in statuses(worker)), statuses(worker)


def test_watchdog_pings_only_when_systemd_asks_for_them(config_file, start_worker):
    asked = start_worker(config_file, watchdog_usec=2_000_000)
    asked.receive(3)
    assert sum("WATCHDOG=1" in m for m in asked.messages) >= 3
    not_asked = start_worker(config_file)
    not_asked.receive(3)
    assert not any("WATCHDOG=1" in m for m in not_asked.messages)


def test_sigterm_is_a_warm_shutdown_the_task_in_flight_finishes(config_file, start_worker):
    worker = start_worker(config_file)
    client = subprocess.Popen(
        [PYTHON, "-m", "celeryd_pkg.submit", "--config", str(config_file),
         "sleep", "3", "--json"], env=clean_env(), stdout=subprocess.PIPE, text=True, cwd="/")
    deadline = time.monotonic() + 10
    while "Task celeryd.sleep" not in worker.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started >= 1.5  # it waited for the task
    outcome = json.loads(client.communicate(timeout=30)[0])
    assert (outcome["state"], outcome["result"]) == ("SUCCESS", 3)
    worker.receive(1)
    assert any("STOPPING=1" in m for m in worker.messages)


def queue_depth(rabbitmq, vhost, queue="celery"):
    listing = rabbitmq.ctl("list_queues", "-p", vhost, "name", "messages").stdout
    return dict(line.split("\t") for line in listing.splitlines()[1:]).get(queue)


def test_a_stop_right_after_a_result_leaves_no_task_to_run_again(tmp_path, rabbitmq,
                                                                  start_worker):
    # Celery's own warm stop lost the acknowledgement of a task whose result was still in the
    # pool's pipe, 1 stop in 3 here: the task ran again at the next start.
    account = vhost_account(rabbitmq, "celeryd-stop")
    config = write_config(tmp_path / "etc", rabbitmq, account)
    for attempt in range(10):
        worker = start_worker(config)
        assert submit(config, "add", str(attempt), "1").stdout == f"{attempt + 1}\n"
        if attempt % 2:  # a reload stops the same way, then runs on in the same process
            os.kill(worker.proc.pid, signal.SIGHUP)
            worker.wait_for("READY=1", timeout=30)
            assert submit(config, "add", "0", "0").stdout == "0\n"
        assert worker.stop() == 0
        assert queue_depth(rabbitmq, account["vhost"]) == "0", f"attempt {attempt}"
        received = [line for line in worker.output().splitlines()
                    if "Task celeryd.add[" in line and line.endswith("received")]
        assert len(received) == 1 + attempt % 2, worker.output()
    assert "Stopping: taking no new tasks, finishing the " in worker.output()


def test_a_stop_while_the_broker_is_away_is_at_once(tmp_path, own_broker, start_worker):
    node, account = own_broker
    config = write_config(tmp_path / "etc", node, account)
    worker = start_worker(config)
    node.stop()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                s.startswith("Broker connection lost") for s in statuses(worker)):
            worker.receive(1)
        assert worker.stop(timeout=20) == 0  # not waiting for a broker to acknowledge to
        assert "Warm shutdown" in worker.output()
    finally:
        node.start()


def test_sighup_reloads_the_config_without_losing_the_task_in_flight(tmp_path, rabbitmq, account,
                                                                     start_worker):
    config = write_config(tmp_path / "etc", rabbitmq, account, "worker:\n  concurrency: 1\n")
    worker = start_worker(config)
    pid = worker.proc.pid
    client = subprocess.Popen(
        [PYTHON, "-m", "celeryd_pkg.submit", "--config", str(config), "sleep", "2"],
        env=clean_env(), stdout=subprocess.PIPE, text=True, cwd="/")
    time.sleep(1)
    config.write_text(config.read_text().replace("concurrency: 1", "concurrency: 4"))
    worker.messages.clear()
    os.kill(pid, signal.SIGHUP)
    ready = worker.wait_for("READY=1", timeout=30)
    assert any("RELOADING=1" in m for m in worker.messages)
    assert not any("STOPPING=1" in m for m in worker.messages)
    assert "concurrency 4" in ready
    assert worker.proc.pid == pid and worker.proc.poll() is None  # same process: re-executed
    assert client.communicate(timeout=30)[0] == "2\n"
    assert submit(config, "add", "2", "2").stdout == "4\n"


def test_sighup_with_a_broken_config_keeps_the_worker_running(tmp_path, rabbitmq, account,
                                                              start_worker):
    config = write_config(tmp_path / "etc", rabbitmq, account)
    worker = start_worker(config)
    config.write_text(config.read_text() + "worker:\n  concurrency: lots\n")
    worker.messages.clear()
    os.kill(worker.proc.pid, signal.SIGHUP)
    time.sleep(2)
    assert "Reload refused, still running the previous config" in worker.output()
    assert "worker.concurrency: expected an integer" in worker.output()
    assert not any("RELOADING=1" in m for m in worker.messages)
    client_config = write_config(tmp_path / "client", rabbitmq, account)
    assert submit(client_config, "add", "5", "5").stdout == "10\n"


def test_a_broken_config_at_start_exits_3_with_one_line_and_never_runs_on_defaults(tmp_path):
    config = tmp_path / "celeryd.yaml"
    config.write_text("worker:\n  queues: celery\n")
    result = run_module("celeryd_pkg.worker", "--config", str(config))
    assert result.returncode == 3
    assert result.stderr == (f"celeryd: {config}: line 2: worker.queues: expected a list of "
                             f"strings, got a string 'celery'\n")
    assert result.stdout == ""


def test_an_unimportable_task_module_exits_3_naming_it(tmp_path):
    config = tmp_path / "celeryd.yaml"
    config.write_text("tasks:\n  modules: [no_such_module_here]\n")
    result = run_module("celeryd_pkg.worker", "--config", str(config))
    assert result.returncode == 3
    assert "tasks.modules: cannot import 'no_such_module_here'" in result.stderr
    assert "Traceback" not in result.stderr


def test_operator_task_modules_are_served(tmp_path, rabbitmq, account, start_worker):
    code = tmp_path / "code"
    code.mkdir()
    (code / "shop_tasks.py").write_text(
        "from celery import shared_task\n\n"
        "@shared_task(name='shop.total')\ndef total(prices):\n    return sum(prices) * 2\n")
    config = write_config(tmp_path / "etc", rabbitmq, account,
                          f"tasks:\n  modules: [shop_tasks]\n  pythonpath: [{code}]\n")
    start_worker(config)
    assert submit(config, "shop.total", "[1, 2]").stdout == "6\n"


@pytest.mark.parametrize("log_tasks", [True, False])
def test_log_tasks_switches_the_per_task_lines_and_failures_are_logged_either_way(
        tmp_path, rabbitmq, account, start_worker, log_tasks):
    config = write_config(tmp_path / "etc", rabbitmq, account,
                          f"worker:\n  log_tasks: {str(log_tasks).lower()}\n")
    worker = start_worker(config)
    done = submit(config, "add", "4", "4", "--json")
    assert done.returncode == 0, done.stderr
    done_id = json.loads(done.stdout)["id"]
    failed = submit(config, "xsum", '["a", 1]', "--json")
    assert failed.returncode == 1, failed.stderr
    failed_id = json.loads(failed.stdout)["id"]
    failure = f"Task celeryd.xsum[{failed_id}] raised unexpected"
    lines = [f"Task celeryd.add[{done_id}] received", f"Task celeryd.add[{done_id}] succeeded"]
    # A child writes its line just after sending the result: wait for the lines expected.
    expected = [failure, *lines] if log_tasks else [failure]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(line in worker.output() for line in expected):
        time.sleep(0.1)
    log = worker.output()
    assert failure in log, log
    assert [line in log for line in lines] == [log_tasks, log_tasks], log


def test_stock_celery_tools_work_with_the_same_config(config_file, start_worker):
    start_worker(config_file)
    result = subprocess.run(
        [PYTHON, "-m", "celery", "-A", "celeryd_pkg.app", "inspect", "ping",
         "--timeout", "5"], env=clean_env(CELERYD_CONFIG=str(config_file)),
        capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "pong" in result.stdout


def test_waits_for_a_broker_that_is_down_at_start_then_becomes_ready(tmp_path, own_broker,
                                                                     start_worker):
    node, account = own_broker
    config = write_config(tmp_path / "etc", node, account)
    node.stop()
    try:
        worker = start_worker(config, ready=False)
        worker.receive(3)
        assert any(s.startswith("Waiting for broker amqp://w:***@127.0.0.1:") for s in statuses(worker))
        assert not any("READY=1" in m for m in worker.messages)
        assert worker.proc.poll() is None
    finally:
        node.start()
    worker.wait_for("READY=1", timeout=60)
    assert submit(config, "add", "4", "4").stdout == "8\n"


def test_reconnects_after_a_broker_restart_and_says_so(tmp_path, own_broker, start_worker):
    node, account = own_broker
    config = write_config(tmp_path / "etc", node, account)
    worker = start_worker(config, watchdog_usec=2_000_000)
    node.stop()
    try:
        down = submit(config, "add", "1", "1")
        assert down.returncode == 4
        worker.receive(3)
        assert any(s.startswith("Broker connection lost; reconnecting to amqp://w:***@")
                   for s in statuses(worker))
        # Reconnecting is not a hang: the watchdog keeps being fed within the grace period.
        worker.messages.clear()
        worker.receive(2)
        assert any("WATCHDOG=1" in m for m in worker.messages)
    finally:
        node.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(s.startswith("Consuming") for s in statuses(worker)[-3:]):
        worker.receive(1)
    assert statuses(worker)[-1].startswith("Consuming from celery")
    assert worker.proc.poll() is None
    assert submit(config, "add", "4", "4", "--timeout", "30").stdout == "8\n"


def test_a_refused_login_exits_5_with_one_line_and_no_secret(tmp_path, rabbitmq, account):
    config = write_config(tmp_path / "etc", rabbitmq, dict(account, password="wrong-secret"))
    result = run_module("celeryd_pkg.worker", "--config", str(config))
    assert result.returncode == 5
    assert result.stderr == (f"celeryd: broker refused the login of user '{account['user']}' at "
                             f"amqp://{account['user']}:***@127.0.0.1:{rabbitmq.port}/"
                             f"{account['vhost']}: check the password in /etc/celeryd/credentials "
                             f"(celeryd-admin check)\n")
