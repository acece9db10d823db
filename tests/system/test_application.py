"""Your own application, installed exactly as README.md says, on one booted machine per suite.

    Given a booted <suite> machine with the three debs installed and the worker running
    When  the operator runs README's "Your own application" block, as it is written
    Then  `celery-submit myapp.tasks.add 4 4` prints 8, `myapp.tasks.to_api` returns what the
          venv's camel-converter computes, and the application's client script prints 8 twice
    And   a tasks.virtualenv that is not a venv, hidden by ProtectHome or made by another Python
          is refused by `systemctl reload` (the old config keeps running) and by a start (exit 3)
    And   a new version of the code is picked up by `systemctl reload` with no task lost

    | suite    |
    | trixie   |
    | bookworm |

The steps share one machine (module scope) and run in file order.
"""

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import zipfile

import pytest

from tests.system import harness
from tests.system.conftest import REPO, _print_on_failure
from tests.system.harness import wait_until
from tests.system.test_install import assert_active

README = os.path.join(REPO, "README.md")
MARKER = "<!-- tested by tests/system/test_application.py -->\n```sh\n"
WHEELS = "/root/wheels"
VENV = "/opt/myapp/venv"
CONF_D = "/etc/celeryd/conf.d"
PIP_LINE = re.compile(rf"^{re.escape(VENV)}/bin/pip install ", re.M)
# The container has no network, so no PyPI: README's pip line runs unchanged, but pip reads
# these (PIP_NO_INDEX, PIP_FIND_LINKS) and installs camel-converter from the wheel this test
# builds by hand instead of downloading it. That line is the only one whose source differs.
OFFLINE_PIP = f"export PIP_NO_INDEX=1 PIP_FIND_LINKS={WHEELS} PIP_DISABLE_PIP_VERSION_CHECK=1"

# camel-converter 6.0.0's dict_to_camel, for what myapp.tasks.to_api uses: snake_case keys of
# dicts, also inside lists and dicts, to camelCase; values and non-string keys unchanged.
CAMEL_CONVERTER = '''"""Stand-in for camel-converter 6.0.0, built by tests/system/test_application.py."""


def to_camel(snake_string):
    first, *rest = snake_string.split("_")
    return first + "".join(word.title() for word in rest)


def dict_to_camel(data):
    if not isinstance(data, dict):
        raise TypeError(f"Expected a dict, got {type(data).__name__}")
    return _convert(data)


def _convert(value):
    if isinstance(value, dict):
        return {(to_camel(k) if isinstance(k, str) else k): _convert(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_convert(v) for v in value]
    return value
'''


def build_wheel(directory, name="camel_converter", project="camel-converter", version="6.0.0"):
    """Write a pure-Python wheel of the module above into directory, as pip expects one: the
    module, then dist-info METADATA, WHEEL and a RECORD of every file's sha256 and size."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": CAMEL_CONVERTER,
        f"{dist_info}/METADATA": (f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
                                  f"Requires-Python: >=3.11\n"),
        f"{dist_info}/WHEEL": ("Wheel-Version: 1.0\nGenerator: celeryd-test\n"
                               "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{name}-{version}-py3-none-any.whl"), "wb") as f:
        f.write(buffer.getvalue())


def readme_block():
    """Return the operator commands of README's "Your own application", as written there."""
    with open(README) as f:
        text = f.read()
    start = text.index(MARKER) + len(MARKER)
    return text[start:text.index("\n```", start) + 1]


@pytest.fixture(scope="module", params=harness.SUITES, ids=harness.SUITES)
def machine(request, prerequisites, debs):
    """A booted machine of the suite with celeryd installed and running on a local broker,
    the camel-converter wheel in WHEELS (the package installs examples/)."""
    with harness.Container(request.param) as container:
        container.prepare(debs, ["rabbitmq-server", "python3-venv"])
        build_wheel(container.root + WHEELS)
        container.boot()
        container.run(["apt-get", "install", "-y", "rabbitmq-server"], timeout=600)
        container.run(f"cd {container.deb_dir} && apt-get install -y ./*.deb", timeout=600)
        assert_active(container, "celery-worker")
        yield container


@pytest.fixture(autouse=True)
def journal_on_failure(request, machine):
    yield
    _print_on_failure(request, machine)


def show(machine, prop):
    return machine.run(["systemctl", "show", "-p", prop, "--value", "celery-worker"]).stdout.strip()


def submit(machine, *args):
    result = machine.run(["celery-submit", *args], check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def worker_log(machine):
    return machine.journal(unit="celery-worker")


def test_the_readme_block_installs_myapp_and_everything_it_prints_is_right(machine):
    block = readme_block()
    assert len(PIP_LINE.findall(block)) == 1, block  # the line OFFLINE_PIP is for
    run = machine.run(f"{OFFLINE_PIP}\nset -e\n{block}", check=False, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    printed = [line for line in run.stdout.splitlines()
               if line in ("8", '{"ticketPrice": 40}')]
    # celery-submit add, celery-submit to_api, then the client script's two lines.
    assert printed == ["8", '{"ticketPrice": 40}', "8", "8"], run.stdout[-3000:]
    assert run.stdout.rstrip().endswith("8\n8")
    assert_active(machine, "celery-worker")


def test_the_dependency_comes_from_the_venv_and_celery_from_debian(machine):
    payload = {"ticket_price": 40, "seat": {"row_number": 7, "seat_ids": [{"seat_id": 3}]}}
    result = json.loads(submit(machine, "myapp.tasks.to_api", json.dumps(payload)))
    assert result == {"ticketPrice": 40, "seat": {"rowNumber": 7, "seatIds": [{"seatId": 3}]}}
    # Nowhere but in the venv: the worker found it through tasks.virtualenv alone.
    outside = machine.run(["/usr/bin/python3", "-c", "import camel_converter"], check=False)
    assert outside.returncode == 1 and "No module named 'camel_converter'" in outside.stderr
    inside = machine.run([f"{VENV}/bin/python", "-c",
                          "import celery, camel_converter; print(celery.__file__); "
                          "print(camel_converter.__file__)"]).stdout.split()
    assert inside[0].startswith("/usr/lib/python3/dist-packages/celery/")
    assert inside[1].startswith(f"{VENV}/lib/python3.")
    assert submit(machine, "myapp.tasks.add", "4", "4") == "8\n"


def test_the_application_client_prints_8_twice_as_a_member_of_group_celery(machine):
    run = machine.run("PYTHONPATH=/srv/myapp /usr/bin/python3 /srv/myapp/client.py",
                      user="myapp", check=False, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (0, "8\n8\n", "")


def reload_refused(machine, venv, reason):
    """Point tasks.virtualenv at venv in a later drop-in, reload, and assert the reload is
    refused with reason and the worker keeps running the previous config."""
    pid, refused = show(machine, "MainPID"), worker_log(machine).count("Reload refused")
    machine.run(f"printf 'tasks:\\n  virtualenv: {venv}\\n' > {CONF_D}/zz-bad.yaml")
    machine.run(["systemctl", "reload", "celery-worker"])
    wait_until(lambda: worker_log(machine).count("Reload refused") > refused, 30,
               "the reload to be refused")
    line = [line for line in worker_log(machine).splitlines() if "Reload refused" in line][-1]
    assert (f"Reload refused, still running the previous config: celeryd: tasks.virtualenv: "
            f"{venv}: {reason}") in line
    assert show(machine, "MainPID") == pid
    assert show(machine, "ActiveState") == "active"
    assert submit(machine, "myapp.tasks.to_api", '{"still_here": 1}') == '{"stillHere": 1}\n'
    machine.run(["rm", f"{CONF_D}/zz-bad.yaml"])


def test_a_reload_onto_a_bad_virtualenv_is_refused_and_the_old_config_keeps_running(machine):
    machine.run(["mkdir", "-p", "/srv/not-a-venv"])
    reload_refused(machine, "/srv/not-a-venv", "not a virtual environment (no pyvenv.cfg)")
    # It exists for root, but the unit's ProtectHome=yes hides /root from the worker.
    machine.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip",
                 "/root/venv"])
    reload_refused(machine, "/root/venv", "not visible to the worker: its unit has "
                                          "ProtectHome=yes")


def test_a_venv_of_another_python_version_is_refused_at_reload_and_at_start(machine):
    machine.run(["cp", "-p", f"{VENV}/pyvenv.cfg", "/root/pyvenv.cfg.good"])
    machine.run(["sed", "-i", "s/^version = .*/version = 3.9.2/", f"{VENV}/pyvenv.cfg"])
    reload_refused(machine, VENV, "made by Python 3.9, the worker runs Python 3.")
    # The drop-in reload_refused wrote is gone: myapp.yaml's venv is the bad one now.
    restart = machine.run(["systemctl", "restart", "celery-worker"], check=False, timeout=120)
    assert restart.returncode != 0
    assert show(machine, "ExecMainStatus") == "3"
    log = worker_log(machine)
    assert re.search(rf"celeryd: tasks\.virtualenv: {VENV}: made by Python 3\.9, the worker "
                     rf"runs Python 3\.\d+; recreate it with: /usr/bin/python3 -m venv "
                     rf"--system-site-packages --clear {VENV}, then pip install", log), log[-3000:]
    assert "Traceback" not in log
    machine.run(["cp", "-p", "/root/pyvenv.cfg.good", f"{VENV}/pyvenv.cfg"])
    machine.run(["systemctl", "restart", "celery-worker"], timeout=120)
    assert_active(machine, "celery-worker")
    assert submit(machine, "myapp.tasks.add", "4", "4") == "8\n"


def in_background(machine, *args):
    """Start celery-submit inside the machine without waiting for it."""
    return subprocess.Popen(["nsenter", "-t", str(machine.pid), "-a", "--", "celery-submit", *args],
                            env=harness.ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_new_version_is_picked_up_by_reload_and_no_task_is_lost(machine):
    assert submit(machine, "myapp.tasks.version") == "1\n"
    pid = show(machine, "MainPID")
    received = re.compile(r"Task myapp\.tasks\.version\[([0-9a-f-]+)\] received")
    before = len(received.findall(worker_log(machine)))
    clients = [in_background(machine, "myapp.tasks.version", "2", "--json", "--timeout", "120")
               for _ in range(10)]
    wait_until(lambda: len(received.findall(worker_log(machine))) >= before + 2, 60,
               "the first tasks to run")
    machine.run(["sed", "-i", 's/^__version__ = "1"$/__version__ = "2"/',
                 "/srv/myapp/myapp/__init__.py"])
    machine.run(["systemctl", "reload", "celery-worker"])
    outcomes = []
    for client in clients:
        out, err = client.communicate(timeout=180)
        assert client.returncode == 0, err
        outcomes.append(json.loads(out))
    assert {o["state"] for o in outcomes} == {"SUCCESS"}
    versions = sorted(o["result"] for o in outcomes)
    # Those running at the reload finished on the old code, those queued ran on the new.
    assert set(versions) == {"1", "2"}, versions
    log = worker_log(machine)
    for outcome in outcomes:  # each ran to success exactly once
        assert log.count(f"Task myapp.tasks.version[{outcome['id']}] succeeded") == 1
    assert show(machine, "MainPID") == pid  # re-executed in place, as a reload does
    assert_active(machine, "celery-worker")
    assert submit(machine, "myapp.tasks.version") == "2\n"
