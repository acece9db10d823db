"""The Python client API against a real RabbitMQ and a real worker serving the operator's code:
the seed's client, ported, and its errors as celeryd's exceptions."""

import subprocess

import pytest

from tests.integration.broker import RabbitMQ
from tests.integration.conftest import PYTHON, REPO, WorkerProcess, clean_env, write_config

# The operator's task module, as README shows it.
OPERATOR_TASKS = ("from celery import shared_task\n\n\n"
                  "@shared_task\ndef add(x, y):\n    return x + y\n")
# The seed's client scripts, first lines ported: no URL, no password.
SEED_BUILTIN = ('from celeryd_pkg.client import app\n'
                'print(app.send_task("celeryd.add", (4, 4)).get(timeout=1))\n')
SEED_OPERATOR = ('from celeryd_pkg.client import app\n'
                 'from myapp.tasks import add\n'
                 'print(add.delay(4, 4).get(timeout=1))\n')
# An application that reports celeryd's errors as celery-submit does: one line, exit code.
REPORTING = """\
import sys
from celeryd_pkg.client import load_app
from celeryd_pkg.errors import CelerydError
app = load_app(sys.argv[1])
try:
    {call}
except CelerydError as error:
    import celery.exceptions
    print(type(error).__name__, isinstance(error, celery.exceptions.TimeoutError))
    print(error.message)
    sys.exit(error.exit_code)
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, rabbitmq, account):
    """A worker serving myapp.tasks, configured under root/etc/celeryd, as a package installs
    it: (root, config file, code directory)."""
    tmp = tmp_path_factory.mktemp("client")
    code = tmp / "code"
    (code / "myapp").mkdir(parents=True)
    (code / "myapp" / "__init__.py").write_text("")
    (code / "myapp" / "tasks.py").write_text(OPERATOR_TASKS)
    root = tmp / "root"
    config = write_config(root / "etc" / "celeryd", rabbitmq, account,
                          f"tasks:\n  modules: [myapp.tasks]\n  pythonpath: [{code}]\n")
    worker = WorkerProcess(config, tmp)
    try:
        worker.wait_for("READY=1")
        yield root, config, code
    finally:
        worker.close()


def run_python(script, code, *args, **env):
    """Run script in Debian's python with the operator's code importable; return the result."""
    return subprocess.run([PYTHON, "-c", script, *map(str, args)], capture_output=True,
                          text=True, timeout=60, cwd="/",
                          env=clean_env(PYTHONPATH=f"{REPO}:{code}", **env))


def test_the_seed_client_sends_a_built_in_task_with_the_default_config(deployment):
    root, _, code = deployment
    result = run_python(SEED_BUILTIN, code, CELERYD_ROOT=str(root))
    assert (result.returncode, result.stdout, result.stderr) == (0, "8\n", "")


def test_the_operators_shared_task_is_called_with_delay(deployment):
    _, config, code = deployment
    result = run_python(SEED_OPERATOR, code, CELERYD_CONFIG=str(config))
    assert (result.returncode, result.stdout, result.stderr) == (0, "8\n", "")


def test_a_task_that_raised_re_raises_its_own_exception(deployment):
    _, config, code = deployment
    script = ("import sys\nfrom celeryd_pkg.client import load_app\n"
              "app = load_app(sys.argv[1])\n"
              "try:\n    app.send_task('celeryd.add', (4, 'four')).get(timeout=10)\n"
              "except TypeError as error:\n"
              "    print(type(error).__module__, type(error).__name__)\n")
    result = run_python(script, code, config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "builtins TypeError\n"


def test_a_result_timeout_is_celeryds_and_celerys_timeout(deployment):
    _, config, code = deployment
    call = "app.send_task('celeryd.sleep', (2,)).get(timeout=0.3)"
    result = run_python(REPORTING.format(call=call), code, config)
    assert result.returncode == 6, result.stderr
    kind, message = result.stdout.splitlines()
    assert kind == "ResultTimeoutError True"
    assert message.startswith("celeryd: no result for task ") and "within 0.3s" in message


def test_a_wrong_password_is_login_refused_exit_5_without_the_password(deployment, rabbitmq,
                                                                       account, tmp_path):
    _, _, code = deployment
    wrong = dict(account, password="not-the-password-42")
    config = write_config(tmp_path / "etc", rabbitmq, wrong)
    call = "app.send_task('celeryd.add', (4, 4)).get(timeout=5)"
    result = run_python(REPORTING.format(call=call), code, config)
    assert result.returncode == 5, result.stdout + result.stderr
    kind, message = result.stdout.splitlines()
    assert kind == "LoginRefused False"
    assert f"user '{account['user']}'" in message and "credentials" in message
    output = result.stdout + result.stderr
    assert wrong["password"] not in output and account["password"] not in output
    assert "Traceback" not in output


def test_tls_to_the_plain_port_is_tls_failed_exit_4(deployment):
    _, config, code = deployment
    call = "app.send_task('celeryd.add', (4, 4)).get(timeout=5)"
    result = run_python(REPORTING.format(call=call), code, config,
                        CELERYD_BROKER_TLS="true", CELERYD_BROKER_VERIFY="false")
    assert result.returncode == 4, result.stdout + result.stderr
    kind, message = result.stdout.splitlines()
    assert kind == "TlsFailed False" and "the broker's TLS port?" in message
    assert "Traceback" not in result.stderr


def test_a_submit_only_client_account_sends_and_gets_results(deployment, rabbitmq, account,
                                                             tmp_path):
    """The account `provision --role client` makes: it declares nothing, writes only to task
    exchanges and reads only its direct reply-to."""
    from celeryd_pkg.admin.provision import CLIENT

    _, _, code = deployment
    client = dict(account, user="client-app", password="client-app-pw-0123456789")
    rabbitmq.ctl("add_user", client["user"], input=client["password"] + "\n", check=False)
    rabbitmq.ctl("set_permissions", "-p", client["vhost"], client["user"], *CLIENT)
    config = write_config(tmp_path / "etc", rabbitmq, client)
    result = run_python(SEED_OPERATOR, code, CELERYD_CONFIG=str(config))
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("8\n", "")


def test_threads_each_get_their_results_ready_polls_and_groups_work(deployment):
    root, _, code = deployment
    script = (
        "import threading, time\n"
        "from celeryd_pkg.client import app\n"
        "from myapp.tasks import add\n"
        "sums = {}\n"
        "def send(base):\n"
        "    results = [add.delay(base, i) for i in range(10)]\n"
        "    sums[base] = [result.get(timeout=30) for result in results]\n"
        "threads = [threading.Thread(target=send, args=(base,)) for base in (100, 200)]\n"
        "[thread.start() for thread in threads]\n"
        "[thread.join() for thread in threads]\n"
        "polled = app.send_task('celeryd.add', (1, 2))\n"
        "deadline = time.monotonic() + 30\n"
        "while not polled.ready() and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "from celery import group\n"
        "print(sums[100] == list(range(100, 110)), sums[200] == list(range(200, 210)),\n"
        "      polled.state, polled.result,\n"
        "      group(add.s(i, i) for i in range(3))().get(timeout=30))\n")
    result = run_python(script, code, CELERYD_ROOT=str(root))
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("True True SUCCESS 3 [0, 2, 4]\n", "")


def test_a_chain_returns_its_last_steps_result_to_the_client(deployment):
    # The worker publishes the second step; it must reply to the client's direct reply-to
    # address, which the broker refuses in its bare form from the worker's channel.
    root, _, code = deployment
    script = ("from celeryd_pkg.client import app\n"
              "from myapp.tasks import add\n"
              "print((add.s(4, 4) | add.s(4))().get(timeout=30))\n")
    result = run_python(script, code, CELERYD_ROOT=str(root))
    assert (result.returncode, result.stdout, result.stderr) == (0, "12\n", "")


def test_an_application_keeps_sending_after_the_broker_restarts(tmp_path, start_worker):
    node = RabbitMQ(tmp_path / "rabbitmq")
    account = {"user": "restart", "password": "restart-test-pw-0123", "vhost": "restart"}
    try:
        node.start()
        node.add_account(account["user"], account["password"], account["vhost"])
        config = write_config(tmp_path / "etc", node, account)
        start_worker(config)
        script = ("import sys\nfrom celeryd_pkg.client import load_app\n"
                  "app = load_app(sys.argv[1])\n"
                  "print(app.send_task('celeryd.add', (4, 4)).get(timeout=30), flush=True)\n"
                  "sys.stdin.readline()\n"
                  "print(app.send_task('celeryd.add', (5, 5)).get(timeout=90), flush=True)\n")
        application = subprocess.Popen(
            [PYTHON, "-c", script, str(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd="/", env=clean_env())
        try:
            assert application.stdout.readline() == "8\n"
            node.stop()
            node.start()
            stdout, stderr = application.communicate("go\n", timeout=120)
        finally:
            application.kill()
        assert (application.returncode, stdout, stderr) == (0, "10\n", "")
    finally:
        node.close()
