"""The Celery apps: the control-only app (reliable settings, no task code) and the worker's."""

import json
import socket
import subprocess
from pathlib import Path

import pytest

from celeryd_pkg import app as module
from celeryd_pkg import config
from celeryd_pkg.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret"
BUILTINS = ["celeryd.add", "celeryd.echo", "celeryd.mul", "celeryd.sleep", "celeryd.xsum"]


@pytest.fixture
def etc(tmp_path):
    """Return a function writing celeryd.yaml with extra YAML (a credentials file beside it,
    and in tmp_path/code: celeryd_test_ok, a shared task, and celeryd_test_boom, which raises
    on import); it returns the file's path."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "celeryd_test_ok.py").write_text(
        "from celery import shared_task\n\n\n@shared_task(name='ok.ping')\n"
        "def ping():\n    return 'pong'\n")
    (code / "celeryd_test_boom.py").write_text(
        "raise RuntimeError('operator code ran')\n")
    (tmp_path / "credentials").write_text(f"broker:\n  password: {SECRET}\n")

    def write(extra=""):
        main = tmp_path / "celeryd.yaml"
        main.write_text(f"tasks:\n  pythonpath: [{code}]\n{extra}")
        return main
    return write


def in_a_fresh_python(code, main):
    """Run code (sys.argv[1] is the config file) in a new interpreter and return what it
    prints, as JSON: Celery adds every app.task() of a process to all its later apps."""
    result = subprocess.run(["/usr/bin/python3", "-c", code, str(main)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_control_app_registers_no_task_and_imports_no_task_module(etc):
    main = etc("  modules: [celeryd_test_ok, celeryd_test_boom]\n")
    code = (
        "import json, sys\n"
        "from celeryd_pkg import app, config\n"
        "settings = config.load(sys.argv[1], env={})\n"
        "control = app.make_control_app(settings)\n"
        "print(json.dumps({'tasks': sorted(control.tasks),\n"
        "    'imported': sorted(m for m in sys.modules if m.startswith(('celeryd_test',\n"
        "                                                              'celeryd_pkg.tasks'))),\n"
        "    'on_path': settings.tasks.pythonpath[0] in sys.path}))\n")
    found = in_a_fresh_python(code, main)
    assert [name for name in found["tasks"] if not name.startswith("celery.")] == []
    assert (found["imported"], found["on_path"]) == ([], False)


def test_the_control_app_has_the_reliable_settings_and_the_configured_prefetch(etc):
    main = etc("worker:\n  prefetch_multiplier: 3\n  queues: [jobs, mail]\n"
               "  concurrency: 5\n")
    conf = module.make_control_app(config.load(str(main), env={})).conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost) == (True, True)
    assert conf.broker_transport_options["confirm_publish"] is True
    assert (conf.task_serializer, conf.result_serializer) == ("json", "json")
    assert (conf.accept_content, conf.result_accept_content) == (["json"], ["json"])
    assert (conf.worker_prefetch_multiplier, conf.worker_concurrency) == (3, 5)
    assert conf.task_default_delivery_mode == "persistent"
    assert [(q.name, q.durable) for q in conf.task_queues] == [("jobs", True), ("mail", True)]
    assert conf.task_default_queue == "jobs"
    # The broker login itself needs the password; Celery masks it when it logs the URL.
    assert conf.broker_url == f"amqp://celery:{SECRET}@localhost:5672/celery"


def test_the_worker_app_registers_the_built_in_tasks_and_the_operators(etc):
    main = etc("  modules: [celeryd_test_ok]\n")
    code = (
        "import json, sys\n"
        "from celeryd_pkg import app, config\n"
        "worker = app.make_app(config.load(sys.argv[1], env={}))\n"
        "print(json.dumps({'tasks': sorted(n for n in worker.tasks\n"
        "                                  if not n.startswith('celery.')),\n"
        "                  'add': worker.tasks['celeryd.add'](4, 4)}))\n")
    found = in_a_fresh_python(code, main)
    assert found == {"tasks": BUILTINS + ["ok.ping"], "add": 8}


def test_a_task_module_that_raises_on_import_is_a_config_error_naming_it(etc):
    main = etc("  modules: [celeryd_test_ok, celeryd_test_boom]\n")
    code = (
        "import json, sys\n"
        "from celeryd_pkg import app, config\n"
        "from celeryd_pkg.errors import CelerydError\n"
        "try:\n"
        "    app.make_app(config.load(sys.argv[1], env={}))\n"
        "except CelerydError as error:\n"
        "    print(json.dumps([type(error).__name__, error.exit_code, error.message]))\n")
    assert in_a_fresh_python(code, main) == [
        ConfigError.__name__, 3, "celeryd: tasks.modules: cannot import 'celeryd_test_boom': "
                                 "RuntimeError: operator code ran"]


@pytest.mark.parametrize("extra, instance, expected", [
    ("worker:\n  name: w1@box\n", None, "w1@box"),
    ("worker:\n  name: w1@box\n", "fast", "w1@box"),
    ("", "fast", f"fast@{socket.gethostname()}"),
    ("", None, f"celery@{socket.gethostname()}"),
])
def test_the_node_name_is_worker_name_else_instance_or_celery_at_this_host(
        etc, extra, instance, expected):
    assert module.node_name(config.load(str(etc(extra)), env={}), instance) == expected


def test_a_control_app_built_after_the_worker_app_in_one_process_still_has_no_task(etc):
    # Built-ins are registered with shared=False: Celery's default would add them to every
    # app built later in the process.
    main = etc()
    settings = config.load(str(main), env={})
    worker = module.make_app(settings)
    control = module.make_control_app(settings)
    try:
        assert "celeryd.add" in worker.tasks
        assert not [name for name in control.tasks if name.startswith("celeryd.")]
    finally:
        worker.close()
        control.close()
