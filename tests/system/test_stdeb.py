"""The stdeb route builds an installable python3-celeryd-pkg from setup.cfg alone.

    Given a booted <suite> machine
    When  the admin installs the python3-celeryd-pkg that `make stdeb` built
    Then  the package imports on the suite's python3 and its commands run

    | suite    |
    | trixie   |
    | bookworm |
"""

import glob
import os
import subprocess

import pytest

import celeryd_pkg

from tests.system import harness
from tests.system.conftest import REPO


@pytest.fixture(scope="session")
def stdeb_deb():
    build = subprocess.run(["make", "-C", REPO, "stdeb"], capture_output=True, text=True)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    (deb,) = glob.glob(os.path.join(REPO, "build", "stdeb", "python3-celeryd-pkg_*.deb"))
    return deb


def test_stdeb_package_installs_and_runs(prerequisites, suite, stdeb_deb):
    with harness.Container(suite) as machine:
        machine.prepare([stdeb_deb])
        machine.boot()
        machine.run(f"cd {machine.deb_dir} && apt-get install -y ./*.deb", timeout=600)
        status = machine.run(["dpkg-query", "-W", "-f", "${Status}", "python3-celeryd-pkg"])
        assert status.stdout == "install ok installed"
        imported = machine.run(["python3", "-c", "import celeryd_pkg.app, celeryd_pkg.worker; "
                                "print(celeryd_pkg.__version__)"])
        assert imported.stdout.strip() == celeryd_pkg.__version__
        usage = machine.run(["celery-submit", "add", "--timeout", "x"], check=False)
        assert usage.returncode == 2 and "invalid float value: 'x'" in usage.stderr
