"""celery-submit against a real RabbitMQ and a real worker: the seed scenario and every exit code."""

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.integration.broker import free_port
from tests.integration.conftest import REPO, clean_env, submit, write_config

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def assert_clean(result):
    assert "Traceback" not in result.stdout + result.stderr


def test_add_4_4_prints_8_and_exits_0(shared_worker):
    config, _ = shared_worker
    result = submit(config, "add", "4", "4")
    assert (result.returncode, result.stdout, result.stderr) == (0, "8\n", "")


def test_json_literals_lists_and_kwargs_reach_the_task(shared_worker):
    config, _ = shared_worker
    assert submit(config, "xsum", "[1, 2, 3.5]").stdout == "6.5\n"
    assert submit(config, "mul", "--kwarg", "x=6", "--kwarg", "y=7").stdout == "42\n"
    assert submit(config, "echo", '{"a": [1, "b"]}').stdout == '{"a": [1, "b"]}\n'
    assert submit(config, "echo", "plain words").stdout == "plain words\n"


def test_json_output_is_one_object_with_id_state_result_runtime(shared_worker):
    config, _ = shared_worker
    result = submit(config, "add", "2", "3", "--json")
    assert result.returncode == 0
    outcome = json.loads(result.stdout)
    assert set(outcome) == {"id", "state", "result", "runtime"}
    assert (outcome["state"], outcome["result"]) == ("SUCCESS", 5)
    assert UUID.match(outcome["id"]) and 0 < outcome["runtime"] < 30


def test_no_wait_prints_the_task_id_and_the_task_still_runs(shared_worker):
    config, worker = shared_worker
    result = submit(config, "echo", "no-wait-marker", "--no-wait")
    assert result.returncode == 0 and UUID.match(result.stdout.strip())
    task_id = result.stdout.strip()
    submit(config, "add", "0", "0")  # a later task: the earlier one has been taken by now
    assert f"Task celeryd.echo[{task_id}] succeeded" in worker.output()


def test_countdown_delays_the_task(shared_worker):
    config, _ = shared_worker
    outcome = json.loads(submit(config, "add", "1", "1", "--countdown", "2", "--json").stdout)
    assert outcome["result"] == 2 and outcome["runtime"] >= 1.5


def test_queue_option_routes_to_that_queue(tmp_path, rabbitmq, account, start_worker):
    config = write_config(tmp_path / "etc", rabbitmq, account, "worker:\n  queues: [special]\n")
    worker = start_worker(config)
    result = submit(config, "add", "20", "22", "--queue", "special")
    assert (result.returncode, result.stdout) == (0, "42\n")
    assert "celeryd.add" in worker.output()


def test_exit_1_when_the_task_raises_with_its_error(shared_worker):
    config, _ = shared_worker
    result = submit(config, "add", "1", '"x"')
    assert result.returncode == 1 and result.stdout == ""
    assert re.match(r"celery-submit: task celeryd.add \[[0-9a-f-]+\] raised TypeError: "
                    r"unsupported operand", result.stderr)
    assert_clean(result)


def test_exit_1_json_still_prints_the_failure_object(shared_worker):
    config, _ = shared_worker
    result = submit(config, "xsum", "5", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["state"] == "FAILURE"


def test_exit_1_for_a_task_no_worker_knows(shared_worker):
    config, _ = shared_worker
    result = submit(config, "nosuch.task", "--timeout", "10")
    assert result.returncode == 1 and "raised NotRegistered: nosuch.task" in result.stderr


def test_exit_2_on_bad_arguments(shared_worker):
    config, _ = shared_worker
    result = submit(config, "add", "1", "--countdown", "soon")
    assert result.returncode == 2
    assert result.stderr == ("celery-submit: argument --countdown: invalid float value: 'soon' "
                             "(see celery-submit --help)\n")


def test_exit_3_on_a_broken_config_naming_file_and_key(tmp_path):
    config = tmp_path / "celeryd.yaml"
    config.write_text("client:\n  timeout: 5\n  queeu: x\n")
    result = submit(config, "add", "1", "2")
    assert result.returncode == 3
    assert result.stderr == f"celeryd: {config}: line 3: unknown key 'client.queeu'\n"


def test_exit_3_with_the_group_hint_for_a_user_who_cannot_read_credentials(rabbitmq, account):
    # A world-traversable directory, since the test drops to user nobody.
    directory = Path(tempfile.mkdtemp(prefix="celeryd-perm-"))
    try:
        directory.chmod(0o755)
        config = write_config(directory, rabbitmq, account)
        config.chmod(0o644)
        # nobody may not be able to read the checkout: give it its own copy of the code.
        shutil.copytree(REPO / "celeryd_pkg", directory / "src" / "celeryd_pkg",
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", str(directory / "src")], check=True)
        env = clean_env(PYTHONPATH=str(directory / "src"))
        result = submit(config, "add", "4", "4", user="nobody", env=env)
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith(f"celeryd: {directory}/credentials: permission denied; "
                                        f"it is readable by group 'root'")
        assert "adduser $USER root" in result.stderr
        assert account["password"] not in result.stdout + result.stderr
    finally:
        shutil.rmtree(directory)


def test_exit_4_when_no_broker_listens(tmp_path, account):
    class Stopped:
        port = free_port()  # nothing listens here: what a stopped broker looks like
    config = write_config(tmp_path, Stopped, account)
    result = submit(config, "add", "4", "4")
    assert result.returncode == 4
    assert result.stderr.startswith(f"celery-submit: cannot connect to broker at "
                                    f"127.0.0.1:{Stopped.port} (Connection refused)")
    assert_clean(result)


def test_exit_4_for_a_queue_no_worker_has_created(shared_worker):
    config, _ = shared_worker
    result = submit(config, "add", "1", "1", "--queue", "misspelt-queue")
    assert result.returncode == 4
    assert "no queue 'misspelt-queue'" in result.stderr


def test_exit_5_on_a_wrong_password(tmp_path, rabbitmq, account):
    config = write_config(tmp_path, rabbitmq, dict(account, password="not-the-password"))
    result = submit(config, "add", "4", "4")
    assert result.returncode == 5
    assert result.stderr.startswith(f"celery-submit: broker refused the login of user '{account['user']}' at "
                                    f"amqp://{account['user']}:***@127.0.0.1:{rabbitmq.port}/")
    assert "not-the-password" not in result.stderr


def test_exit_5_on_a_vhost_without_permission(tmp_path, rabbitmq, account):
    rabbitmq.ctl("add_vhost", "no-rights-here", check=False)
    config = write_config(tmp_path, rabbitmq, dict(account, vhost="no-rights-here"))
    result = submit(config, "add", "4", "4")
    assert result.returncode == 5
    assert "access to vhost 'no-rights-here'" in result.stderr
    assert_clean(result)


def test_exit_6_on_timeout_printing_the_task_id(shared_worker):
    config, _ = shared_worker
    result = submit(config, "sleep", "3", "--timeout", "0.5")
    assert result.returncode == 6
    task_id = result.stdout.strip()
    assert UUID.match(task_id)
    assert result.stderr == (f"celery-submit: no result for task {task_id} within 0.5s "
                             f"(is a worker running? celeryd-admin check); results are not "
                             f"stored (results.backend: rpc); set results.backend: redis to "
                             f"look results up later (README, 'Results you can come back "
                             f"to')\n")


def test_password_from_the_environment_works_and_is_never_printed(tmp_path, rabbitmq, account,
                                                                  shared_worker):
    config = write_config(tmp_path, rabbitmq, dict(account, password="wrong"))
    env = dict(os.environ, CELERYD_BROKER_PASSWORD=account["password"],
               PATH="/usr/sbin:/usr/bin:/sbin:/bin", PYTHONPATH=str(Path(__file__).parents[2]))
    result = submit(config, "add", "1", "1", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert account["password"] not in result.stdout + result.stderr
