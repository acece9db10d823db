"""Results you can come back to: results.backend redis with a real worker, a private RabbitMQ
and a private redis-server; every lookup from a new process, after the sender exited."""

import json
import re
import subprocess
import time
import uuid

import pytest

from celeryd_pkg.admin import tls
from tests.integration.conftest import (
    PYTHON, REPO, RedisServer, WorkerProcess, clean_env, submit, write_config,
)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NOT_STORED = ("celery-submit: results are not stored (results.backend: rpc); set "
              "results.backend: redis to look results up later (README, 'Results you can "
              "come back to')\n")


def not_found(task_id):
    return (f"celery-submit: no result for {task_id} (not done yet, older than "
            f"results.expires, or never sent)\n")


@pytest.fixture(scope="module")
def store_worker(tmp_path_factory, rabbitmq, account, redis_server):
    """One worker storing its results in the private redis-server: (config file, worker)."""
    tmp = tmp_path_factory.mktemp("store-worker")
    config = write_config(tmp / "etc", rabbitmq, account, redis_server.results_config())
    worker = WorkerProcess(config, tmp)
    try:
        worker.wait_for("READY=1")
        yield config, worker
    finally:
        worker.close()


def sent(config, *args):
    """Send a task with --no-wait (the submitting process exits); return its id."""
    result = submit(config, *args, "--no-wait")
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    assert UUID.match(task_id)
    return task_id


def test_a_result_sent_with_no_wait_is_looked_up_from_a_new_process(store_worker):
    config, _ = store_worker
    task_id = sent(config, "add", "4", "4")
    result = submit(config, "result", task_id, "--wait", "20")
    assert (result.returncode, result.stdout, result.stderr) == (0, "8\n", "")
    # Done: looking once finds it, and --json prints the object of a normal submit.
    result = submit(config, "result", task_id, "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"id": task_id, "state": "SUCCESS", "result": 8,
                                         "runtime": None}


def test_a_failed_task_exits_1_with_its_error_line(store_worker):
    config, _ = store_worker
    task_id = sent(config, "add", "1", '"x"')
    result = submit(config, "result", task_id, "--wait", "20")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"celery-submit: task {task_id} raised TypeError: "
                                    f"unsupported operand")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_unknown_id_exits_6_with_the_line(store_worker):
    config, _ = store_worker
    unknown = str(uuid.uuid4())
    result = submit(config, "result", unknown)
    assert (result.returncode, result.stdout, result.stderr) == (6, "", not_found(unknown))
    known = sent(config, "add", "1", "2")
    result = submit(config, "result", known, unknown, "--wait", "1", "--json")
    assert result.returncode == 6 and result.stderr == not_found(unknown)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["id"], line["state"], line["result"]) for line in lines] == [
        (known, "SUCCESS", 3), (unknown, "PENDING", None)]


def test_result_under_rpc_exits_3_saying_how_to_store_results(tmp_path, rabbitmq, account):
    config = write_config(tmp_path / "etc", rabbitmq, account)
    result = submit(config, "result", str(uuid.uuid4()))
    assert (result.returncode, result.stdout, result.stderr) == (3, "", NOT_STORED)


def test_a_waiting_submit_prints_8_through_the_store(store_worker):
    config, _ = store_worker
    result = submit(config, "add", "4", "4")
    assert (result.returncode, result.stdout, result.stderr) == (0, "8\n", "")
    outcome = json.loads(submit(config, "mul", "6", "7", "--json").stdout)
    assert (outcome["state"], outcome["result"]) == ("SUCCESS", 42) and outcome["runtime"] > 0


def test_a_timeout_with_redis_says_look_it_up_later_and_it_can_be(store_worker):
    config, _ = store_worker
    result = submit(config, "sleep", "2", "--timeout", "0.5")
    task_id = result.stdout.strip()
    assert result.returncode == 6 and UUID.match(task_id)
    assert result.stderr == (f"celery-submit: no result for task {task_id} within 0.5s (is a "
                             f"worker running? celeryd-admin check); look it up later: "
                             f"celery-submit result {task_id}\n")
    result = submit(config, "result", task_id, "--wait", "20")
    assert (result.returncode, result.stdout) == (0, "2\n")


def test_batch_waiting_with_redis_is_refused_in_one_line(store_worker, tmp_path):
    config, _ = store_worker
    result = submit(config, "--batch", "-", input='["add", [1, 1]]\n')
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr.startswith("celery-submit: --batch waits on direct reply-to") and (
        len(result.stderr.splitlines()) == 1)


def test_the_python_client_reads_a_result_an_earlier_process_stored(store_worker):
    config, _ = store_worker
    task_id = sent(config, "add", "4", "4")
    failed = sent(config, "add", "1", '"x"')
    script = (
        "import sys\n"
        "from celeryd_pkg.client import load_app\n"
        "app = load_app(sys.argv[1])\n"
        "print(app.AsyncResult(sys.argv[2]).get(timeout=20))\n"
        "try:\n"
        "    app.AsyncResult(sys.argv[3]).get(timeout=20)\n"
        "except TypeError as error:\n"
        "    print('raised', type(error).__name__)\n"
        "print(app.send_task('celeryd.add', (2, 3)).get(timeout=20))\n"
    )
    result = subprocess.run([PYTHON, "-c", script, str(config), task_id, failed],
                            env=clean_env(), capture_output=True, text=True, timeout=90,
                            cwd=str(REPO))
    assert (result.returncode, result.stdout) == (0, "8\nraised TypeError\n5\n"), result.stderr


def test_a_result_is_gone_after_results_expires(tmp_path, rabbitmq, account, redis_server,
                                                start_worker):
    # The worker sets the key's expiry: its own config says results.expires: 1.
    config = write_config(tmp_path / "etc", rabbitmq, account,
                          redis_server.results_config() + "  expires: 1\n"
                          "worker:\n  queues: [expiring]\n")
    start_worker(config)
    task_id = sent(config, "add", "4", "4", "--queue", "expiring")
    result = submit(config, "result", task_id, "--wait", "20")
    assert (result.returncode, result.stdout) == (0, "8\n")
    time.sleep(2)
    result = submit(config, "result", task_id)
    assert (result.returncode, result.stdout, result.stderr) == (6, "", not_found(task_id))


def test_results_survive_a_restart_of_the_store_and_the_worker_waits_it_out(store_worker,
                                                                              redis_server):
    config, worker = store_worker
    task_id = sent(config, "add", "4", "4")
    assert submit(config, "result", task_id, "--wait", "20").stdout == "8\n"
    redis_server.client().save()  # started with --save "": written now, loaded at start
    redis_server.stop()
    assert submit(config, "result", task_id).returncode == 4  # the store is down: exit 4
    # A task that ends while the store is down: the worker holds its result until it is back.
    held = sent(config, "add", "2", "2")
    time.sleep(3)
    redis_server.start()
    result = submit(config, "result", task_id)
    assert (result.returncode, result.stdout) == (0, "8\n")
    result = submit(config, "result", held, "--wait", "30")
    assert (result.returncode, result.stdout) == (0, "4\n"), result.stderr + worker.output()
    # The worker kept running across the restart and stores results again.
    result = submit(config, "add", "20", "22", "--timeout", "30")
    assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr + worker.output()


def with_ca(config, ca_file):
    """Set broker.ca_file in a conf.d file beside config (the broker itself stays plain)."""
    (config.parent / "conf.d").mkdir(exist_ok=True)
    (config.parent / "conf.d" / "10-ca.yaml").write_text(f"broker:\n  ca_file: {ca_file}\n")
    return config


def test_a_store_over_tls_is_verified_with_the_brokers_ca(tmp_path, rabbitmq, account,
                                                          start_worker):
    """results.tls on (it follows broker.tls; set here on its own): rediss://, the store's
    certificate checked against broker.ca_file and its name, by the worker and the client."""
    for name in ("ours", "other"):
        (tmp_path / name / "etc").mkdir(parents=True)
        tls.setup(tls.ca_files(tmp_path / name / "etc"), tmp_path / name, ["127.0.0.1"],
                  group="root")
    server = RedisServer(tmp_path / "redis", tls_dir=tmp_path / "ours" / "tls").start()
    try:
        store = (f"results:\n  backend: redis\n  host: 127.0.0.1\n  port: {server.port}\n"
                 f"  tls: true\n")
        config = with_ca(write_config(tmp_path / "etc", rabbitmq, account,
                                      f"{store}worker:\n  queues: [tls-results]\n"),
                         tmp_path / "ours" / "tls" / "ca.pem")
        start_worker(config)
        task_id = sent(config, "add", "4", "4", "--queue", "tls-results")
        result = submit(config, "result", task_id, "--wait", "20")
        assert (result.returncode, result.stdout, result.stderr) == (0, "8\n", "")
        untrusting = with_ca(write_config(tmp_path / "other-etc", rabbitmq, account, store),
                             tmp_path / "other" / "tls" / "ca.pem")
        result = submit(untrusting, "result", task_id)
        assert result.returncode == 4 and "certificate verify failed" in result.stderr
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    finally:
        server.stop()
