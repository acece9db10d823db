"""Unit tests: the credentials writer, and provisioning against a fake rabbitmqctl."""

import grp
import json
import os
import stat
import textwrap
from pathlib import Path

import pytest

from celeryd_pkg import config as config_module
from celeryd_pkg import credentials as module
from celeryd_pkg import provision
from celeryd_pkg.errors import BrokerUnreachable, CelerydError, ConfigError, UsageError

FAKE_RABBITMQCTL = textwrap.dedent('''\
    #!/usr/bin/python3
    """A stand-in for rabbitmqctl: logs argv, stdin and environment; keeps state in JSON."""
    import json, os, sys

    stdin = sys.stdin.read()
    with open(os.environ["FAKE_CTL_LOG"], "a") as log:
        log.write(json.dumps({"argv": sys.argv, "stdin": stdin, "env": dict(os.environ)}) + "\\n")
    if os.environ.get("FAKE_CTL_DOWN"):
        sys.stderr.write("Error: unable to perform an operation on node 'rabbit@fake'. Please "
                         "see diagnostics information and suggestions below.\\n")
        sys.exit(69)
    path = os.environ["FAKE_CTL_STATE"]
    state = (json.load(open(path)) if os.path.exists(path)
             else {"users": {}, "vhosts": ["/"], "perms": {}})
    args = [a for a in sys.argv[1:] if a != "-q"]
    if "--formatter" in args:
        del args[args.index("--formatter"):args.index("--formatter") + 2]
    cmd, rest = args[0], args[1:]
    password = stdin.split("\\n")[0]

    def fail(code, message):
        sys.stderr.write("Error:\\n" + message + "\\n")
        sys.exit(code)

    if cmd == os.environ.get("FAKE_CTL_FAIL"):
        # A misbehaving tool that echoes its input: the caller must mask it.
        fail(70, "something broke while handling " + (password or "nothing"))
    if cmd in ("add_user", "change_password", "authenticate_user") and len(rest) != 1:
        fail(64, "the fake accepts no password argument")
    users, perms = state["users"], state["perms"]
    if cmd == "list_vhosts":
        print(json.dumps([{"name": v} for v in state["vhosts"]]))
    elif cmd == "list_users":
        print(json.dumps([{"user": u, "tags": []} for u in users]))
    elif cmd == "list_user_permissions":
        if rest[0] not in users:
            fail(69, '{:no_such_user, "%s"}' % rest[0])
        print(json.dumps([{"vhost": k.split("\\t")[0], "configure": c, "write": w, "read": r}
                          for k, (c, w, r) in perms.items() if k.split("\\t")[1] == rest[0]]))
    elif cmd == "add_vhost":
        state["vhosts"] = sorted(set(state["vhosts"]) | {rest[0]})
    elif cmd == "delete_vhost":
        if rest[0] not in state["vhosts"]:
            fail(65, "Virtual host '%s' does not exist" % rest[0])
        state["vhosts"].remove(rest[0])
    elif cmd == "add_user":
        if rest[0] in users:
            fail(70, 'User "%s" already exists' % rest[0])
        if not password:
            fail(65, "Password is not provided via argument or stdin")
        users[rest[0]] = password
    elif cmd == "change_password":
        if rest[0] not in users:
            fail(67, 'User "%s" does not exist' % rest[0])
        users[rest[0]] = password
    elif cmd == "authenticate_user":
        if users.get(rest[0]) != password:
            fail(65, 'Error: failed to authenticate user "%s"' % rest[0])
        print("Success")
    elif cmd == "delete_user":
        if rest[0] not in users:
            fail(67, 'User "%s" does not exist' % rest[0])
        del users[rest[0]]
        for key in [k for k in perms if k.endswith("\\t" + rest[0])]:
            del perms[key]
    elif cmd == "set_permissions":
        assert rest[0] == "-p" and len(rest) == 6, rest
        perms[rest[1] + "\\t" + rest[2]] = rest[3:]
    else:
        fail(64, "unknown command " + cmd)
    json.dump(state, open(path, "w"))
''')
WRITES = {"add_vhost", "delete_vhost", "add_user", "change_password", "delete_user",
          "set_permissions"}


class FakeCtl:
    """The fake rabbitmqctl in a directory: its path, environment, state and call log."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "rabbitmqctl"
        self.path.write_text(FAKE_RABBITMQCTL)
        self.path.chmod(0o755)
        self.log = self.dir / "calls.jsonl"
        self.state_path = self.dir / "state.json"
        self.env = {"FAKE_CTL_LOG": str(self.log), "FAKE_CTL_STATE": str(self.state_path),
                    "CELERYD_RABBITMQCTL": str(self.path), "PATH": "/usr/bin:/bin"}

    def ctl(self, **extra):
        return provision.Rabbitmqctl(env={**self.env, **extra})

    def calls(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def commands(self):
        return [[a for a in c["argv"][1:] if a != "-q"][0] for c in self.calls()]

    def state(self):
        return json.loads(self.state_path.read_text())

    def reset_log(self):
        self.log.unlink(missing_ok=True)


def other_group():
    """An existing group other than root, so group ownership is really tested."""
    for name in ("daemon", "bin", "sys", "adm", "nogroup"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    raise AssertionError("no usable system group on this host")


@pytest.fixture
def fake(tmp_path):
    return FakeCtl(tmp_path / "fake")


@pytest.fixture
def creds_path(tmp_path):
    return tmp_path / "etc" / "credentials"


def assert_secret_only_on_stdin(fake, password):
    for call in fake.calls():
        assert all(password not in arg for arg in call["argv"])
        assert all(password not in value for value in call["env"].values())


# --- the credentials writer -----------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o777])
def test_write_gives_the_file_mode_0640_and_owner_root_group_whatever_the_umask(
        creds_path, umask):
    gid = other_group()
    old = os.umask(umask)
    try:
        module.write(creds_path, {"user": "celery", "password": "s3cret"}, gid)
    finally:
        os.umask(old)
    info = creds_path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (0, gid)


def test_write_sets_owner_and_mode_on_the_temp_file_before_the_first_byte(
        creds_path, monkeypatch):
    gid = other_group()
    seen = []
    real_write = os.write

    def spy(fd, data):
        info = os.fstat(fd)
        seen.append((stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_size))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    module.write(creds_path, {"password": "s3cret"}, gid)
    monkeypatch.undo()
    assert seen and seen[0] == (0o640, 0, gid, 0)


def test_write_creates_the_temp_file_exclusively_in_the_same_directory(creds_path, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        opened.append((Path(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    module.write(creds_path, {"password": "s3cret"}, 0)
    monkeypatch.undo()
    tmp, flags = opened[0]
    assert tmp.parent == creds_path.parent and tmp != creds_path
    assert flags & os.O_EXCL and flags & os.O_CREAT and flags & os.O_NOFOLLOW


@pytest.mark.parametrize("failing", ["write", "fsync", "fchown"])
def test_a_failure_mid_write_leaves_the_old_file_intact_and_no_temp_file(
        creds_path, monkeypatch, failing):
    module.write(creds_path, {"password": "old"}, 0)
    before = creds_path.read_bytes()

    def broken(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(ConfigError) as error:
        module.write(creds_path, {"password": "new"}, 0)
    monkeypatch.undo()
    assert error.value.exit_code == 3
    assert "new" not in error.value.message
    assert creds_path.read_bytes() == before
    assert sorted(p.name for p in creds_path.parent.iterdir()) == ["credentials"]


def test_a_failure_inside_the_staged_block_leaves_the_old_file_intact_and_no_temp_file(
        creds_path):
    module.write(creds_path, {"password": "old"}, 0)
    before = creds_path.read_bytes()
    with pytest.raises(RuntimeError):
        with module.staged(creds_path, {"password": "new"}, 0) as tmp:
            assert tmp.exists() and "new" in tmp.read_text()
            raise RuntimeError("broker said no")
    assert creds_path.read_bytes() == before
    assert sorted(p.name for p in creds_path.parent.iterdir()) == ["credentials"]


def test_write_replaces_the_file_by_rename(creds_path):
    module.write(creds_path, {"password": "old"}, 0)
    inode = creds_path.stat().st_ino
    module.write(creds_path, {"password": "new"}, 0)
    assert creds_path.stat().st_ino != inode
    assert module.read(creds_path)["password"] == "new"


def test_the_written_file_is_what_the_config_loader_accepts(tmp_path):
    main = tmp_path / "celeryd.yaml"
    main.write_text("broker:\n  host: 127.0.0.1\n")
    secret = "p:w@/ #'\"x"
    module.write(tmp_path / "credentials", {"host": "broker.example", "port": 5673,
                                            "vhost": "/", "user": "u", "password": secret}, 0)
    settings = config_module.load(main, env={})
    b = settings.broker
    assert (b.host, b.port, b.vhost, b.user, b.password) == ("broker.example", 5673, "/", "u",
                                                             secret)


def test_read_returns_nothing_for_a_missing_file(creds_path):
    assert module.read(creds_path) == {}


def test_read_reports_a_malformed_file_without_quoting_it(creds_path):
    creds_path.parent.mkdir()
    creds_path.write_text("broker:\n  password: 'unterminated-secret\n")
    with pytest.raises(ConfigError) as error:
        module.read(creds_path)
    assert "unterminated-secret" not in error.value.message
    assert str(creds_path) in error.value.message


def test_resolve_group_names_the_missing_group_and_the_fix():
    with pytest.raises(ConfigError) as error:
        module.resolve_group("celeryd-no-such-group")
    assert error.value.exit_code == 3
    assert error.value.message == (
        "celeryd-admin: group 'celeryd-no-such-group' does not exist: install the celeryd "
        "package or pass --group")


def test_remove_is_idempotent(creds_path):
    module.write(creds_path, {"password": "x"}, 0)
    assert module.remove(creds_path) is True
    assert module.remove(creds_path) is False


# --- rabbitmqctl arguments ------------------------------------------------------------------

def test_new_passwords_are_long_random_and_url_safe():
    passwords = {provision.new_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(len(p) >= 43 and p.replace("-", "").replace("_", "").isalnum() for p in passwords)


def test_add_user_passes_the_password_on_stdin_only_and_without_q(fake):
    # rabbitmqctl 4.0 hangs on `-q` with a password on stdin.
    fake.ctl().add_user("celery", "hunter2-secret")
    (call,) = fake.calls()
    assert call["argv"][1:] == ["add_user", "celery"]
    assert call["stdin"] == "hunter2-secret\n"
    assert_secret_only_on_stdin(fake, "hunter2-secret")


def test_change_password_and_authenticate_pass_the_password_on_stdin_only(fake):
    ctl = fake.ctl()
    ctl.add_user("celery", "one")
    ctl.change_password("celery", "two-secret")
    assert ctl.authenticate("celery", "two-secret") is True
    assert ctl.authenticate("celery", "one") is False
    calls = fake.calls()
    assert [c["argv"][1:] for c in calls[1:]] == [
        ["change_password", "celery"], ["authenticate_user", "celery"],
        ["authenticate_user", "celery"]]
    assert [c["stdin"] for c in calls[1:]] == ["two-secret\n", "two-secret\n", "one\n"]
    assert_secret_only_on_stdin(fake, "two-secret")


def test_commands_without_a_secret_get_an_empty_stdin(fake):
    fake.ctl().users()
    assert fake.calls()[0]["stdin"] == ""


def test_rabbitmqctl_messages_are_masked_if_they_ever_echo_the_password(fake):
    with pytest.raises(CelerydError) as error:
        fake.ctl(FAKE_CTL_FAIL="add_user").add_user("celery", "echoed-secret")
    assert "echoed-secret" not in error.value.message
    assert "***" in error.value.message
    assert "exit code 70" in error.value.message


def test_a_node_that_is_not_running_is_node_down_exit_4(fake):
    with pytest.raises(provision.NodeDown) as error:
        fake.ctl(FAKE_CTL_DOWN="1").users()
    assert isinstance(error.value, BrokerUnreachable) and error.value.exit_code == 4
    assert "unable to perform an operation on node 'rabbit@fake'" in error.value.message
    assert "Please see" not in error.value.message


def test_a_missing_rabbitmqctl_is_node_down(tmp_path):
    ctl = provision.Rabbitmqctl(env={"CELERYD_RABBITMQCTL": str(tmp_path / "nope")})
    with pytest.raises(provision.NodeDown) as error:
        ctl.vhosts()
    assert "not found" in error.value.message


def test_exit_code_69_without_the_node_message_is_not_node_down(fake):
    # list_user_permissions of an unknown user exits 69 too.
    with pytest.raises(CelerydError) as error:
        fake.ctl().permissions("ghost")
    assert not isinstance(error.value, provision.NodeDown)


def test_the_default_rabbitmqctl_is_the_system_one():
    assert provision.Rabbitmqctl(env={}).path == "/usr/sbin/rabbitmqctl"


@pytest.mark.parametrize("name", ["", "-x", "a b", "tab\there", "nl\n"])
def test_user_and_vhost_names_are_checked_before_any_call(fake, creds_path, name):
    with pytest.raises(UsageError):
        provision.provision(fake.ctl(), creds_path, name, "celery", 0)
    with pytest.raises(UsageError):
        provision.provision(fake.ctl(), creds_path, "celery", name, 0)
    assert fake.calls() == []


# --- provision / deprovision logic ----------------------------------------------------------

def test_provision_creates_vhost_user_and_permissions_on_that_vhost_only(fake, creds_path):
    changes = provision.provision(fake.ctl(), creds_path, "celery", "celery", other_group())
    state = fake.state()
    password = module.read(creds_path)["password"]
    assert state["users"] == {"celery": password}
    assert "celery" in state["vhosts"]
    assert state["perms"] == {"celery\tcelery": [".*", ".*", ".*"]}
    assert module.read(creds_path) == {"vhost": "celery", "user": "celery", "password": password}
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o640
    assert creds_path.stat().st_gid == other_group()
    assert len(changes) == 3
    assert_secret_only_on_stdin(fake, password)
    (add,) = [c for c in fake.calls() if "add_user" in c["argv"]]
    assert add["stdin"] == password + "\n"


def test_provision_again_makes_no_rabbitmqctl_write_and_leaves_the_file_untouched(
        fake, creds_path):
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    before = creds_path.stat()
    fake.reset_log()
    assert provision.provision(fake.ctl(), creds_path, "celery", "celery", 0) == []
    assert not WRITES & set(fake.commands())
    after = creds_path.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def test_provision_recreates_a_missing_user_with_the_password_from_the_file(fake, creds_path):
    module.write(creds_path, {"user": "celery", "password": "kept-secret"}, 0)
    before = creds_path.stat()
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    assert fake.state()["users"] == {"celery": "kept-secret"}
    assert creds_path.stat().st_mtime_ns == before.st_mtime_ns
    assert_secret_only_on_stdin(fake, "kept-secret")


def test_provision_sets_a_new_password_when_the_user_exists_but_the_file_does_not(
        fake, creds_path):
    fake.ctl().add_user("celery", "lost")
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    password = module.read(creds_path)["password"]
    assert password != "lost" and fake.state()["users"]["celery"] == password
    assert "change_password" in fake.commands()


def test_provision_resets_the_broker_to_the_file_password_when_they_differ(fake, creds_path):
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    fake.ctl().change_password("celery", "changed-behind-our-back")
    password = module.read(creds_path)["password"]
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    assert fake.state()["users"]["celery"] == password


def test_rotate_changes_the_password_on_the_broker_and_in_the_file(fake, creds_path):
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    old = module.read(creds_path)["password"]
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0, rotate=True)
    new = module.read(creds_path)["password"]
    assert new != old and fake.state()["users"]["celery"] == new


def test_a_failed_rotation_keeps_the_old_file_and_leaves_no_temp_file(fake, creds_path):
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    before = creds_path.read_bytes()
    with pytest.raises(CelerydError) as error:
        provision.provision(fake.ctl(FAKE_CTL_FAIL="change_password"), creds_path, "celery",
                            "celery", 0, rotate=True)
    assert creds_path.read_bytes() == before
    assert sorted(p.name for p in creds_path.parent.iterdir()) == ["credentials"]
    assert "***" in error.value.message


def test_a_file_for_another_user_is_not_used_for_this_one(fake, creds_path):
    module.write(creds_path, {"user": "someone-else", "password": "theirs"}, 0)
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    assert fake.state()["users"]["celery"] != "theirs"
    assert module.read(creds_path)["user"] == "celery"


def test_provision_reports_node_down_before_touching_the_file(fake, creds_path):
    with pytest.raises(provision.NodeDown):
        provision.provision(fake.ctl(FAKE_CTL_DOWN="1"), creds_path, "celery", "celery", 0)
    assert not creds_path.exists()


def test_deprovision_removes_user_and_file_and_is_idempotent(fake, creds_path):
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    changes = provision.deprovision(fake.ctl(), creds_path, "celery", "celery")
    assert len(changes) == 2
    assert fake.state()["users"] == {} and not creds_path.exists()
    assert "celery" in fake.state()["vhosts"]
    assert provision.deprovision(fake.ctl(), creds_path, "celery", "celery") == []


def test_deprovision_deletes_the_vhost_only_when_asked(fake, creds_path):
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    provision.deprovision(fake.ctl(), creds_path, "celery", "celery", delete_vhost=True)
    assert "celery" not in fake.state()["vhosts"]
    assert provision.deprovision(fake.ctl(), creds_path, "celery", "celery",
                                 delete_vhost=True) == []


def test_provision_for_another_vhost_keeps_the_password_and_moves_the_file_to_the_vhost(
        fake, creds_path):
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    password = module.read(creds_path)["password"]
    provision.provision(fake.ctl(), creds_path, "celery", "other", 0)
    assert module.read(creds_path) == {"vhost": "other", "user": "celery", "password": password}
    assert fake.state()["perms"]["other\tcelery"] == [".*", ".*", ".*"]


def test_locked_lets_one_provision_at_a_time(creds_path):
    import threading
    import time

    order = []

    def second():
        with module.locked(creds_path):
            order.append("second")

    with module.locked(creds_path):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]
