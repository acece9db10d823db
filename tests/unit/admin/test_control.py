"""Unit tests: celeryd-admin drain/resume arguments, and the control-only app for `celery -A`."""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from celeryd_pkg.admin import cli, control
from tests.unit.admin.conftest import run

REPO = Path(__file__).resolve().parents[3]
HOST = socket.gethostname()


@pytest.mark.parametrize("argv, instance", [
    (["drain"], None), (["drain", "fast"], "fast"),
    (["resume"], None), (["resume", "fast"], "fast"),
])
def test_drain_and_resume_take_an_optional_instance_and_the_config(argv, instance):
    args = cli.parse_args([*argv, "--config", "/x/celeryd.yaml"])
    assert (args.command, args.instance, args.config) == (argv[0], instance, "/x/celeryd.yaml")
    assert args.command_spec.action is control.action_drain_or_resume


@pytest.mark.parametrize("argv", [["drain", "a", "b"], ["resume", "--bogus"]])
def test_drain_and_resume_refuse_extra_arguments_with_exit_2(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("celeryd-admin: ") and err.count("\n") == 1


@pytest.fixture
def sent(monkeypatch):
    """Record drain and resume instead of broadcasting them: [(command, node, queues)]."""
    calls = []
    for name in ("drain", "resume"):
        def record(settings, node, command=name):
            calls.append((command, node, settings.worker.queues))
            return list(settings.worker.queues)
        monkeypatch.setattr(control, name, record)
    return calls


@pytest.fixture
def instance_etc(etc):
    """The config directory of etc, with queue jobs and an overlay giving instance fast its own."""
    main, _ = etc
    main.write_text("worker:\n  queues: [jobs]\n")
    (main.parent / "conf.d").mkdir()
    (main.parent / "conf.d" / "@fast.yaml").write_text("worker:\n  queues: [fast, slow]\n")
    return main


def test_drain_without_an_instance_drains_the_default_worker(capsys, sent, instance_etc):
    code, out, err = run(capsys, "drain", "--config", str(instance_etc))
    assert (code, err, sent) == (0, "", [("drain", f"celery@{HOST}", ["jobs"])])
    assert out == (f"celery@{HOST}: draining: no new tasks from jobs; tasks in flight finish "
                   f"(celeryd-admin resume undoes it)\n")


def test_drain_of_an_instance_drains_its_node_and_its_queues(capsys, sent, instance_etc):
    code, out, err = run(capsys, "drain", "fast", "--config", str(instance_etc))
    assert (code, err, sent) == (0, "", [("drain", f"fast@{HOST}", ["fast", "slow"])])
    assert out == (f"fast@{HOST}: draining: no new tasks from fast, slow; tasks in flight "
                   f"finish (celeryd-admin resume fast undoes it)\n")


def test_resume_of_an_instance_resumes_its_node_and_its_queues(capsys, sent, instance_etc):
    code, out, err = run(capsys, "resume", "fast", "--config", str(instance_etc))
    assert (code, err, sent) == (0, "", [("resume", f"fast@{HOST}", ["fast", "slow"])])
    assert out == f"fast@{HOST}: consuming from fast, slow again\n"


def test_the_module_app_is_built_on_first_use_without_the_operators_task_code(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "celeryd_test_boom.py").write_text("raise RuntimeError('operator code ran')\n")
    main = tmp_path / "celeryd.yaml"
    main.write_text(f"worker:\n  queues: [jobs]\ntasks:\n  modules: [celeryd_test_boom]\n"
                    f"  pythonpath: [{code}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYD_")}
    env["CELERYD_CONFIG"] = str(main)
    # A fresh interpreter, as `celery -A celeryd_pkg.admin.control inspect` is.
    script = (
        "import json, sys\n"
        "import celeryd_pkg.admin.control as control\n"
        "built_on_import = 'app' in vars(control)\n"
        "app = control.app\n"
        "print(json.dumps({'built_on_import': built_on_import, 'same': control.app is app,\n"
        "    'tasks': sorted(n for n in app.tasks if not n.startswith('celery.')),\n"
        "    'imported': any(m in sys.modules for m in ('celeryd_test_boom',\n"
        "                                               'celeryd_pkg.tasks')),\n"
        "    'queue': app.conf.task_default_queue, 'acks_late': app.conf.task_acks_late}))\n")
    result = subprocess.run(["/usr/bin/python3", "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"built_on_import": False, "same": True, "tasks": [],
                                         "imported": False, "queue": "jobs", "acks_late": True}
