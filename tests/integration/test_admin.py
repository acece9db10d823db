"""celeryd-admin against a real RabbitMQ: provision, rotate, deprovision, join, check, secrecy."""

import json
import secrets
import stat
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from celeryd_pkg import broker, config
from celeryd_pkg.admin.provision import DEFER_MESSAGE
from celeryd_pkg.errors import AccessRefused
from tests.integration.broker import free_port
from tests.integration.conftest import clean_env, run_module
from tests.procscan import ProcScanner

pytestmark = pytest.mark.integration

RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
ACCOUNT_STEPS = ["config", "outbound", "dns", "tcp", "login", "vhost", "workers"]


def admin(rabbitmq, *args, input=None, **extra):
    """Run `python3 -m celeryd_pkg.admin ARGS` with rabbitmqctl pointed at the test node."""
    ctl = extra.pop("ctl", RABBITMQCTL)
    env = clean_env(**{**rabbitmq.env, "CELERYD_RABBITMQCTL": ctl, **extra})
    return run_module("celeryd_pkg.admin", *args, env=env, input=input, timeout=120)


@pytest.fixture
def names():
    """A user and vhost of this test's own on the shared node."""
    suffix = secrets.token_hex(3)
    return {"user": f"prov-{suffix}", "vhost": f"prov-{suffix}"}


def make_etc(directory, rabbitmq, names):
    """celeryd.yaml naming the test node and account (no password); return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    main = directory / "celeryd.yaml"
    main.write_text(f"broker:\n  host: 127.0.0.1\n  port: {rabbitmq.port}\n"
                    f"  vhost: {names['vhost']}\n  user: {names['user']}\n")
    return main


@pytest.fixture
def etc(tmp_path, rabbitmq, names):
    return make_etc(tmp_path / "etc", rabbitmq, names)


def provision(rabbitmq, etc, names, *extra, **env):
    result = admin(rabbitmq, "provision", "--config", str(etc), "--user", names["user"],
                   "--vhost", names["vhost"], "--group", "root", *extra, **env)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    return result


def stored_password(etc):
    return config.load(etc, env={}).broker.password


def login(etc, password=None):
    """Log in with the config (and password if given) through celeryd_pkg.broker."""
    overrides = {("broker", "password"): password} if password else None
    connection = broker.connect(config.load(etc, overrides=overrides, env={}))
    connection.close()


def logging_ctl(tmp_path):
    """A rabbitmqctl that logs its arguments and runs the real one; return (path, log)."""
    log = tmp_path / "ctl.log"
    shim = tmp_path / "rabbitmqctl"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {RABBITMQCTL} "$@"\n')
    shim.chmod(0o755)
    return str(shim), log


def test_provision_creates_an_account_on_its_vhost_only_whose_password_logs_in(
        rabbitmq, etc, names):
    provision(rabbitmq, etc, names)
    creds = etc.parent / "credentials"
    info = creds.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640 and (info.st_uid, info.st_gid) == (0, 0)
    login(etc)
    permissions = json.loads(rabbitmq.ctl("list_user_permissions", names["user"],
                                          "--formatter", "json").stdout)
    assert permissions == [{"vhost": names["vhost"], "configure": ".*", "write": ".*",
                            "read": ".*"}]


def test_provision_again_changes_nothing(rabbitmq, etc, names, tmp_path):
    provision(rabbitmq, etc, names)
    creds = etc.parent / "credentials"
    before, text = creds.stat(), creds.read_text()
    shim, log = logging_ctl(tmp_path)
    provision(rabbitmq, etc, names, ctl=shim)
    after = creds.stat()
    assert (after.st_mtime_ns, after.st_ino, creds.read_text()) == \
        (before.st_mtime_ns, before.st_ino, text)
    commands = [next(word for word in line.split() if not word.startswith("-"))
                for line in log.read_text().splitlines()]
    assert commands == ["list_users", "list_user_permissions", "authenticate_user"]
    login(etc)


def test_rotate_password_sets_a_new_password_and_the_old_one_is_refused(rabbitmq, etc, names):
    provision(rabbitmq, etc, names)
    old = stored_password(etc)
    provision(rabbitmq, etc, names, "--rotate-password")
    new = stored_password(etc)
    assert new != old
    login(etc)  # change_password read the new password from stdin
    with pytest.raises(AccessRefused):
        login(etc, password=old)


def test_provision_recreates_a_deleted_user_with_the_password_in_the_file(
        rabbitmq, etc, names):
    provision(rabbitmq, etc, names)
    creds = etc.parent / "credentials"
    before = creds.stat().st_mtime_ns
    rabbitmq.ctl("delete_user", names["user"])
    with pytest.raises(AccessRefused):
        login(etc)
    provision(rabbitmq, etc, names)
    assert creds.stat().st_mtime_ns == before
    login(etc)


def test_provision_sets_a_new_password_when_the_file_is_missing(rabbitmq, etc, names):
    provision(rabbitmq, etc, names)
    old = stored_password(etc)
    (etc.parent / "credentials").unlink()
    provision(rabbitmq, etc, names)
    assert stored_password(etc) not in (None, old)
    login(etc)


def test_deprovision_removes_the_user_and_the_file_and_is_idempotent(rabbitmq, etc, names):
    provision(rabbitmq, etc, names)
    password = stored_password(etc)
    args = ["deprovision", "--config", str(etc), "--user", names["user"], "--vhost",
            names["vhost"]]
    for _ in range(2):
        result = admin(rabbitmq, *args)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (etc.parent / "credentials").exists()
    with pytest.raises(AccessRefused):
        login(etc, password=password)
    assert names["vhost"] in rabbitmq.ctl("list_vhosts").stdout.split()
    for _ in range(2):
        result = admin(rabbitmq, *args, "--delete-vhost")
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert names["vhost"] not in rabbitmq.ctl("list_vhosts").stdout.split()


@pytest.mark.parametrize("command", ["provision", "deprovision"])
def test_defer_if_absent_with_no_running_node_prints_one_line_and_exits_0(
        rabbitmq, etc, names, command):
    absent = {"RABBITMQ_NODENAME": f"absent-{rabbitmq.port}@localhost"}
    args = [command, "--config", str(etc), "--user", names["user"]]
    if command == "provision":
        args += ["--group", "root"]
    result = admin(rabbitmq, *args, **absent)
    assert result.returncode == 4, result.stderr
    assert "unable to perform an operation on node" in result.stderr
    result = admin(rabbitmq, *args, "--defer-if-absent", **absent)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr.count("\n") == 1
    if command == "provision":
        assert result.stderr == DEFER_MESSAGE + "\n"
    assert not (etc.parent / "credentials").exists()


def test_join_writes_credentials_that_log_in_and_prints_no_secret(
        rabbitmq, account, tmp_path):
    etc = tmp_path / "etc" / "celeryd.yaml"
    etc.parent.mkdir()
    etc.write_text("# broker address and account come from the credentials file\n")
    url = (f"amqp://{quote(account['user'], safe='')}:{quote(account['password'], safe='')}"
           f"@127.0.0.1:{rabbitmq.port}/{quote(account['vhost'], safe='')}")
    result = admin(rabbitmq, "join", "-", "--config", str(etc), "--group", "root",
                   input=url + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"joined amqp://{account['user']}:***@127.0.0.1:{rabbitmq.port}/"
                             f"{account['vhost']}; check with: celeryd-admin check\n")
    assert account["password"] not in result.stdout + result.stderr
    login(etc)


def check(rabbitmq, etc, **env):
    result = admin(rabbitmq, "check", "--config", str(etc), **env)
    assert result.stderr == "" and "Traceback" not in result.stdout
    lines = result.stdout.splitlines()
    assert [line.split()[1].rstrip(":") for line in lines] == ACCOUNT_STEPS
    return result.returncode, lines


def test_check_is_all_ok_with_a_provisioned_account_and_a_running_worker(
        rabbitmq, etc, names, start_worker):
    provision(rabbitmq, etc, names)
    start_worker(etc)
    code, lines = check(rabbitmq, etc)
    assert code == 0, lines
    assert all(line.startswith("OK   ") for line in lines)
    assert lines[-1].startswith("OK   workers: 1 consuming queue 'celery': celery@")
    assert "@" in lines[-1]
    assert stored_password(etc) not in "\n".join(lines)


def test_check_without_workers_fails_workers_exit_1(rabbitmq, etc, names):
    provision(rabbitmq, etc, names)
    code, lines = check(rabbitmq, etc)
    assert code == 1
    assert lines[-1].startswith(f"FAIL workers: no worker has ever declared queue 'celery' "
                                f"on vhost '{names['vhost']}' — systemctl start celery-worker")


def test_check_after_the_workers_stopped_fails_workers_exit_1(
        rabbitmq, etc, names, start_worker):
    provision(rabbitmq, etc, names)
    start_worker(etc).stop()
    code, lines = check(rabbitmq, etc)
    assert code == 1
    assert lines[-1].startswith("FAIL workers: no worker consumes queue 'celery'")


def test_check_with_the_broker_port_closed_fails_tcp_exit_4(rabbitmq, tmp_path, names):
    etc = make_etc(tmp_path / "etc", rabbitmq, names)
    etc.write_text(etc.read_text().replace(str(rabbitmq.port), str(free_port())))
    code, lines = check(rabbitmq, etc)
    assert code == 4
    assert [line[:4] for line in lines] == ["OK  ", "OK  ", "OK  ", "FAIL", "SKIP", "SKIP", "SKIP"]


def test_check_with_a_wrong_password_fails_login_exit_5(rabbitmq, etc, names):
    provision(rabbitmq, etc, names)
    (etc.parent / "credentials").write_text("broker:\n  password: wrong-WRONG-wrong\n")
    code, lines = check(rabbitmq, etc)
    assert code == 5
    assert lines[4].startswith(f"FAIL login: broker refused the login of user "
                               f"'{names['user']}' at amqp://{names['user']}:***@127.0.0.1:")
    assert [line[:4] for line in lines[5:]] == ["SKIP", "SKIP"]
    assert "wrong-WRONG-wrong" not in "\n".join(lines)


def test_check_on_a_vhost_without_permission_fails_vhost_exit_5(rabbitmq, etc, names):
    provision(rabbitmq, etc, names)
    other = names["vhost"] + "-other"
    rabbitmq.ctl("add_vhost", other)
    # The environment overrides the vhost that provision wrote to the credentials file.
    code, lines = check(rabbitmq, etc, CELERYD_BROKER_VHOST=other)
    assert code == 5
    assert lines[4].startswith("OK   login: ")
    assert lines[5].startswith(f"FAIL vhost: user '{names['user']}' has no access to vhost "
                               f"'{other}' — ")
    assert lines[6].startswith("SKIP workers")


def test_the_generated_password_is_never_in_any_process_arguments_environment_or_output(
        rabbitmq, etc, names):
    sampler = ProcScanner(files=("cmdline", "environ"))
    sampler.start()
    try:
        first = provision(rabbitmq, etc, names)
        passwords = [stored_password(etc)]
        rotated = provision(rabbitmq, etc, names, "--rotate-password")
        passwords.append(stored_password(etc))
        (etc.parent / "credentials").unlink()
        rabbitmq.ctl("delete_user", names["user"])
        again = provision(rabbitmq, etc, names)
        passwords.append(stored_password(etc))
    finally:
        sampler.stop()
    login(etc)
    assert len(set(passwords)) == 3
    # The sampler did see rabbitmqctl at work, arguments and all.
    seen = b"\n".join(sampler.seen)
    user = names["user"].encode()
    for argv in (b"add_user\0" + user, b"change_password\0" + user,
                 b"set_permissions\0-p\0" + names["vhost"].encode() + b"\0" + user):
        assert argv in seen
    assert sampler.rounds > 50
    for password in passwords:
        assert password.encode() not in seen
        for result in (first, rotated, again):
            assert password not in result.stdout + result.stderr


def test_provision_without_flags_creates_the_user_and_vhost_named_in_the_config(
        rabbitmq, etc, names):
    # etc's celeryd.yaml names this test's own user and vhost; no --user, no --vhost.
    result = admin(rabbitmq, "provision", "--config", str(etc), "--group", "root")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    stored = yaml.safe_load((etc.parent / "credentials").read_text())["broker"]
    assert (stored["user"], stored["vhost"]) == (names["user"], names["vhost"])
    assert names["user"] in rabbitmq.ctl("list_users").stdout.split()
    login(etc)
