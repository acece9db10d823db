"""Fixtures for system tests: the built .debs and booted Debian containers per suite."""

import glob
import os
import subprocess

import pytest

from tests.system import harness

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ('python3-celeryd-pkg', 'celeryd', 'celery-submit')
JOURNAL_LINES = 200


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (rep_setup, rep_call, rep_teardown) for fixtures."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f'rep_{report.when}', report)


@pytest.fixture(scope='session')
def prerequisites():
    """Fail, never skip, when this host cannot debootstrap or boot containers."""
    try:
        harness.check_prerequisites()
    except harness.HarnessError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(params=harness.SUITES, ids=harness.SUITES)
def suite(request):
    """The Debian release of the machine under test (trixie = 13, bookworm = 12)."""
    return request.param


@pytest.fixture(scope='session')
def debs():
    """Return the paths of the three built .debs, running `make deb` once per session.

    With CELERYD_DEBS_PREBUILT=1, use build/debs/*.deb as they are.
    """
    if os.environ.get('CELERYD_DEBS_PREBUILT') != '1':
        proc = subprocess.run(['make', '-C', REPO, 'deb'], capture_output=True, text=True)
        if proc.returncode:
            pytest.fail(f'`make -C {REPO} deb` failed ({proc.returncode}):\n'
                        f'{(proc.stdout + proc.stderr)[-4000:]}', pytrace=False)
    paths = sorted(glob.glob(os.path.join(REPO, 'build', 'debs', '*.deb')))
    names = {os.path.basename(path).split('_')[0]: path for path in paths}
    missing = [name for name in PACKAGES if name not in names]
    if missing:
        pytest.fail(f'build/debs lacks {", ".join(missing)} (found: {paths})', pytrace=False)
    return [names[name] for name in PACKAGES]


def _print_on_failure(request, container):
    """Print a failed test's container journal tail on the terminal (capture off)."""
    report = getattr(request.node, 'rep_call', None)
    if report is None or not report.failed or not container.pid:
        return
    capture = request.config.pluginmanager.getplugin('capturemanager')
    with capture.global_and_fixture_disabled():
        print(f'\n--- {request.node.nodeid}: journalctl -b --no-pager of {container.name}, '
              f'last {JOURNAL_LINES} lines ---')
        print(container.journal(lines=JOURNAL_LINES))


@pytest.fixture
def bare(prerequisites, suite, request):
    """A booted container of the suite, nothing added."""
    with harness.Container(suite) as container:
        container.boot()
        yield container
        _print_on_failure(request, container)


@pytest.fixture
def booted(prerequisites, suite, debs, request):
    """A booted container of the suite with the debs in /root/debs and, predownloaded,
    everything an offline `apt-get install ./*.deb rabbitmq-server` needs there."""
    with harness.Container(suite) as container:
        container.prepare(debs, ['rabbitmq-server'])
        container.boot()
        yield container
        _print_on_failure(request, container)
