"""Secrets (issue 7, promise 4), against a real RabbitMQ and a real worker: the broker password
never shows up in any process's argv, in the worker's environment, in its log (what the
journal gets), in `celery-submit --json`, in `celeryd-admin check`, or in an error message
with a URL; such URLs read amqp://USER:***@HOST:PORT/VHOST."""

import os
import re

import pytest

from tests.integration.broker import free_port
from tests.integration.conftest import clean_env, run_module, submit, write_config
from tests.procscan import ProcScanner

pytestmark = pytest.mark.integration


def family(pid):
    """pid and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo += [int(child) for child in f.read().split()]
        except OSError:
            pass
    return pids


def read_proc(pid, name):
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


@pytest.fixture
def secret_account(rabbitmq):
    """An account of this test's own whose password is long and recognisable."""
    suffix = os.urandom(3).hex()
    account = {"user": f"sec-{suffix}", "vhost": f"sec-{suffix}",
               "password": f"SeCrEt-{os.urandom(12).hex()}"}
    rabbitmq.add_account(account["user"], account["password"], account["vhost"])
    return account


def test_the_password_is_in_no_argv_no_worker_environment_no_log_and_no_client_output(
        tmp_path, rabbitmq, secret_account, start_worker):
    password = secret_account["password"].encode()
    config = write_config(tmp_path / "etc", rabbitmq, secret_account)
    scanner = ProcScanner()
    scanner.start()
    try:
        worker = start_worker(config, "-c", "2")
        outputs = [submit(config, "add", "20", "22", "--json"),
                   submit(config, "sleep", "0.2", "--no-wait"),
                   submit(config, "xsum", "[1, 2, 3]")]
        worker_pids = family(worker.proc.pid)
        environs = [read_proc(pid, "environ") for pid in worker_pids]
        cmdlines = [read_proc(pid, "cmdline") for pid in worker_pids]
    finally:
        scanner.stop()
    assert len(worker_pids) >= 3  # the main process and its two pool children were examined
    assert [o.returncode for o in outputs] == [0, 0, 0]
    assert '"result": 42' in outputs[0].stdout and '"state": "SUCCESS"' in outputs[0].stdout
    assert scanner.rounds > 20
    assert any(b"celeryd_pkg.worker" in line for line in scanner.seen)
    assert not [line for line in scanner.seen if password in line]
    assert not [env for env in environs if password in env]
    assert not [line for line in cmdlines if password in line]
    for output in outputs:
        assert secret_account["password"] not in output.stdout + output.stderr
    log = worker.output()
    assert "celery@" in log and "succeeded" in log  # the log is the real thing
    assert secret_account["password"] not in log


def test_celeryd_admin_check_shows_the_masked_url_only(tmp_path, rabbitmq, secret_account,
                                                      start_worker):
    config = write_config(tmp_path / "etc", rabbitmq, secret_account)
    start_worker(config)
    result = run_module("celeryd_pkg.admin", "check", "--config", str(config), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    masked = f"amqp://{secret_account['user']}:***@127.0.0.1:{rabbitmq.port}/" \
             f"{secret_account['vhost']}"
    assert masked in result.stdout
    assert secret_account["password"] not in result.stdout + result.stderr


@pytest.mark.parametrize("case", ["vhost refused", "login refused", "port closed"])
def test_error_messages_with_a_url_mask_the_password(tmp_path, rabbitmq, secret_account, case):
    account, port, code = dict(secret_account), rabbitmq.port, 5
    if case == "vhost refused":
        rabbitmq.ctl("add_vhost", account["vhost"] + "-other")
        account["vhost"] += "-other"
    elif case == "login refused":
        account["password"] = "Wrong-" + account["password"]
    else:
        port, code = free_port(), 4
    config = write_config(tmp_path / "etc", type("Node", (), {"port": port}), account)
    env = clean_env()
    masked = f"amqp://{account['user']}:***@127.0.0.1:{port}/{account['vhost']}"
    results = [submit(config, "add", "1", "1", env=env),
               submit(config, "add", "1", "1", "--json", env=env),
               run_module("celeryd_pkg.admin", "check", "--config", str(config), timeout=120),
               run_module("celeryd_pkg.worker", "--config", str(config), timeout=60)
               if case != "port closed" else None]
    for result in filter(None, results):
        text = result.stdout + result.stderr
        for secret in {account["password"], secret_account["password"]}:
            assert secret not in text, text
        assert "Traceback" not in text
        # Wherever a URL is shown, it is the masked one.
        urls = re.findall(r"amqp://\S*", text)
        assert all(url.startswith(masked) for url in urls), urls
    assert [r.returncode for r in results[:2]] == [code, code]
    if case != "port closed":  # (that message names host and port, no URL)
        assert masked in results[0].stderr, results[0].stderr
    if results[3] is not None:  # the worker refuses a bad login with one line and exit 5
        assert results[3].returncode == 5
        assert masked in results[3].stderr
