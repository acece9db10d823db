"""Fixtures for the celeryd-admin command tests: a config directory, a fake rabbitmqctl and
store-setup's layout."""

import io

import pytest

from celeryd_pkg.admin import cli
from tests.unit.fake_rabbitmqctl import FakeCtl

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def etc(tmp_path):
    """A config directory: (celeryd.yaml path, credentials path)."""
    directory = tmp_path / "etc"
    directory.mkdir()
    main = directory / "celeryd.yaml"
    main.write_text("# empty: defaults and credentials only\n")
    return main, directory / "credentials"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake rabbitmqctl, which celeryd-admin finds through the environment."""
    fake = FakeCtl(tmp_path / "fake")
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    return fake


STORE_GROUP = "daemon"  # stands in for redis: not root's, so a file that ignored it would show


@pytest.fixture
def layout(etc, tmp_path):
    """Where store-setup reads and writes, under tmp_path; this host's broker login saved."""
    from celeryd_pkg import account
    from celeryd_pkg.admin import store

    main, creds = etc
    account.save(creds, {"vhost": "celery", "user": "celery", "password": SECRET}, 0)
    return store.Layout(main, tmp_path / "rabbitmq", tmp_path / "systemd" / "celeryd.conf",
                        STORE_GROUP)


@pytest.fixture
def creds_path(tmp_path):
    return tmp_path / "etc" / "credentials"


def run(capsys, *argv, stdin=None, monkeypatch=None):
    """Run celeryd-admin ARGV in-process; return (exit code, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
