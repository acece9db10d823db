"""Unit tests: provision, rotate-password and deprovision, against a fake rabbitmqctl."""

import stat

import pytest

from celeryd_pkg import account
from celeryd_pkg.admin import provision, rabbitmqctl, tls
from celeryd_pkg.errors import CelerydError, UsageError
from tests.unit.admin.conftest import SECRET, run
from tests.unit.fake_rabbitmqctl import WRITES, assert_secret_only_on_stdin, other_group


@pytest.mark.parametrize("name", ["", "-x", "a b", "tab\there", "nl\n"])
def test_user_and_vhost_names_are_checked_before_any_call(fake, creds_path, name):
    with pytest.raises(UsageError):
        provision.provision(fake.ctl(), creds_path, name, "celery", 0)
    with pytest.raises(UsageError):
        provision.provision(fake.ctl(), creds_path, "celery", name, 0)
    assert fake.calls() == []


def test_provision_creates_vhost_user_and_permissions_on_that_vhost_only(fake, creds_path):
    changes = provision.provision(fake.ctl(), creds_path, "celery", "celery", other_group())
    state = fake.state()
    password = account.load(creds_path)["password"]
    assert state["users"] == {"celery": password}
    assert "celery" in state["vhosts"]
    assert state["perms"] == {"celery\tcelery": [".*", ".*", ".*"]}
    assert account.load(creds_path) == {"vhost": "celery", "user": "celery", "password": password}
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
    account.save(creds_path, {"user": "celery", "password": "kept-secret"}, 0)
    before = creds_path.stat()
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    assert fake.state()["users"] == {"celery": "kept-secret"}
    assert creds_path.stat().st_mtime_ns == before.st_mtime_ns
    assert_secret_only_on_stdin(fake, "kept-secret")


def test_provision_sets_a_new_password_when_the_user_exists_but_the_file_does_not(
        fake, creds_path):
    fake.ctl().add_user("celery", "lost")
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    password = account.load(creds_path)["password"]
    assert password != "lost" and fake.state()["users"]["celery"] == password
    assert "change_password" in fake.commands()


def test_provision_resets_the_broker_to_the_file_password_when_they_differ(fake, creds_path):
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    fake.ctl().change_password("celery", "changed-behind-our-back")
    password = account.load(creds_path)["password"]
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    assert fake.state()["users"]["celery"] == password


def test_rotate_changes_the_password_on_the_broker_and_in_the_file(fake, creds_path):
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    old = account.load(creds_path)["password"]
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0, rotate=True)
    new = account.load(creds_path)["password"]
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
    account.save(creds_path, {"user": "someone-else", "password": "theirs"}, 0)
    provision.provision(fake.ctl(), creds_path, "celery", "celery", 0)
    assert fake.state()["users"]["celery"] != "theirs"
    assert account.load(creds_path)["user"] == "celery"


def test_provision_reports_node_down_before_touching_the_file(fake, creds_path):
    with pytest.raises(rabbitmqctl.NodeDown):
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
    password = account.load(creds_path)["password"]
    provision.provision(fake.ctl(), creds_path, "celery", "other", 0)
    assert account.load(creds_path) == {"vhost": "other", "user": "celery", "password": password}
    assert fake.state()["perms"]["other\tcelery"] == [".*", ".*", ".*"]


def test_provision_for_host_prints_a_join_string_with_a_fresh_password(capsys, fake, etc):
    main, creds = etc
    code, out, err = run(capsys, "provision", "--for-host", "web1", "--role", "client",
                         "--broker-host", "10.1.1.1", "--config", str(main))
    assert code == 0
    assert "no TLS on this broker yet" in err
    broker = account.from_url(out)
    assert (broker["user"], broker["host"], broker["port"], broker["tls"]) == (
        "client-web1", "10.1.1.1", 5672, False)
    state = fake.state()
    assert state["users"]["client-web1"] == broker["password"]
    assert state["perms"]["celery\tclient-web1"] == list(provision.CLIENT)
    assert not creds.exists()  # the broker host's own credentials are not touched
    run(capsys, "provision", "--for-host", "web1", "--config", str(main))
    assert fake.state()["perms"]["celery\tworker-web1"] == list(provision.FULL)


def test_provision_for_host_with_tls_set_up_gives_amqps_with_the_ca(capsys, fake, etc):
    main, creds = etc
    ca = tls.ca_files(main.parent)
    tls.setup(ca, main.parent / "rabbitmq", ["10.1.1.1"], group="root")
    code, out, err = run(capsys, "provision", "--for-host", "web1", "--broker-host",
                         "10.1.1.1", "--config", str(main))
    assert (code, err) == (0, "")
    broker = account.from_url(out)
    assert (broker["tls"], broker["port"], broker["ca"]) == (True, 5671, ca.cert.read_text())


@pytest.mark.parametrize("argv", [
    ["provision", "--role", "client"], ["provision", "--broker-host", "h"],
    ["provision", "--for-host", "a", "--rotate-password"], ["provision", "--for-host", "-x"],
    ["provision", "--for-host", "a", "--role", "admin"], ["tls-setup", "--name", "a b"],
])
def test_for_host_options_are_checked(capsys, argv, fake, etc):
    main, creds = etc
    code, out, err = run(capsys, *argv, "--config", str(main))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert fake.calls() == []


def test_provision_is_quiet_on_success_and_writes_the_file(capsys, fake, etc):
    main, creds = etc
    assert run(capsys, "provision", "--config", str(main), "--group", "root") == (0, "", "")
    password = account.load(creds)["password"]
    assert fake.state()["users"] == {"celery": password}


def test_provision_with_a_missing_group_exits_3_before_any_rabbitmqctl_call(capsys, fake, etc):
    main, creds = etc
    code, out, err = run(capsys, "provision", "--config", str(main), "--group",
                         "celeryd-no-such-group")
    assert code == 3 and "does not exist" in err and not creds.exists()
    assert fake.calls() == []


def test_provision_without_a_node_exits_4(capsys, fake, etc, monkeypatch):
    monkeypatch.setenv("FAKE_CTL_DOWN", "1")
    code, out, err = run(capsys, "provision", "--config", str(etc[0]), "--group", "root")
    assert code == 4 and out == "" and err.count("\n") == 1


@pytest.mark.parametrize("how", ["node down", "not installed"])
def test_provision_defer_if_absent_prints_one_line_and_exits_0(
        capsys, fake, etc, monkeypatch, tmp_path, how):
    if how == "node down":
        monkeypatch.setenv("FAKE_CTL_DOWN", "1")
    else:
        monkeypatch.setenv("CELERYD_RABBITMQCTL", str(tmp_path / "no-rabbitmqctl"))
    code, out, err = run(capsys, "provision", "--defer-if-absent", "--config", str(etc[0]),
                         "--group", "root")
    assert (code, out) == (0, "")
    assert err == provision.DEFER_MESSAGE + "\n"
    assert err == ("celeryd: no running RabbitMQ broker here; the setup finishes by itself when "
                   "rabbitmq-server starts here, or run: celeryd-admin provision (or "
                   "celeryd-admin join for a remote broker)\n")
    assert not etc[1].exists()


def test_a_failing_rabbitmqctl_command_exits_1_with_one_line(capsys, fake, etc, monkeypatch):
    monkeypatch.setenv("FAKE_CTL_FAIL", "add_vhost")
    code, out, err = run(capsys, "provision", "--config", str(etc[0]), "--group", "root")
    assert code == 1 and err.count("\n") == 1 and "add_vhost" in err


def test_deprovision_is_quiet_and_idempotent(capsys, fake, etc):
    main, creds = etc
    run(capsys, "provision", "--config", str(main), "--group", "root")
    assert run(capsys, "deprovision", "--config", str(main)) == (0, "", "")
    assert run(capsys, "deprovision", "--config", str(main), "--delete-vhost") == (0, "", "")
    assert not creds.exists() and fake.state()["users"] == {}


def test_deprovision_of_another_hosts_account_keeps_this_hosts_credentials(capsys, fake, etc):
    main, creds = etc
    run(capsys, "provision", "--config", str(main), "--group", "root")
    run(capsys, "provision", "--for-host", "web1", "--role", "client", "--config", str(main))
    assert "client-web1" in fake.state()["users"]
    assert run(capsys, "deprovision", "--user", "client-web1", "--config", str(main)) == (
        0, "", "")
    assert creds.exists() and set(fake.state()["users"]) == {"celery"}


def test_deprovision_defer_if_absent_exits_0_and_still_removes_the_file(
        capsys, fake, etc, monkeypatch):
    main, creds = etc
    account.save(creds, {"password": SECRET}, 0)
    monkeypatch.setenv("FAKE_CTL_DOWN", "1")
    assert run(capsys, "deprovision", "--config", str(main))[0] == 4
    assert creds.exists()
    code, out, err = run(capsys, "deprovision", "--defer-if-absent", "--config", str(main))
    assert (code, out) == (0, "") and err.count("\n") == 1
    assert not creds.exists()


def test_provision_creates_and_writes_the_user_and_vhost_of_the_config(capsys, fake, etc):
    main, creds = etc
    main.write_text("broker:\n  user: other\n  vhost: elsewhere\n")
    assert run(capsys, "provision", "--config", str(main), "--group", "root") == (0, "", "")
    stored = account.load(creds)
    assert (stored["user"], stored["vhost"]) == ("other", "elsewhere")
    assert fake.state()["users"] == {"other": stored["password"]}
    assert fake.state()["perms"] == {"elsewhere\tother": [".*", ".*", ".*"]}


def test_an_operators_later_broker_user_outranks_the_user_provision_wrote_before(
        capsys, fake, etc):
    main, creds = etc
    run(capsys, "provision", "--config", str(main), "--group", "root")
    assert account.load(creds)["user"] == "celery"
    main.write_text("broker:\n  user: other\n")
    assert run(capsys, "provision", "--config", str(main), "--group", "root") == (0, "", "")
    stored = account.load(creds)
    assert stored["user"] == "other"
    assert fake.state()["users"]["other"] == stored["password"]


def test_provision_flags_outrank_the_config(capsys, fake, etc):
    main, creds = etc
    main.write_text("broker:\n  user: other\n")
    assert run(capsys, "provision", "--config", str(main), "--group", "root", "--user", "flag",
               "--vhost", "v") == (0, "", "")
    assert (account.load(creds)["user"], account.load(creds)["vhost"]) == ("flag", "v")


def test_provision_for_host_takes_the_vhost_of_the_config(capsys, fake, etc):
    main, creds = etc
    main.write_text("broker:\n  vhost: elsewhere\n")
    code, out, err = run(capsys, "provision", "--for-host", "web1", "--broker-host", "10.1.1.1",
                         "--config", str(main))
    assert code == 0, err
    assert account.from_url(out)["vhost"] == "elsewhere"
    assert "elsewhere\tworker-web1" in fake.state()["perms"]


def test_provision_leaves_credentials_written_by_join_alone(capsys, fake, etc, monkeypatch):
    main, creds = etc
    joined = {"host": "127.0.0.1", "port": 5672, "vhost": "celery", "user": "worker-self",
              "password": SECRET, "tls": False}
    account.save(creds, joined, 0)
    before = creds.read_bytes()
    # As the package's postinst runs it on every install and upgrade: silent, exit 0.
    assert run(capsys, "provision", "--defer-if-absent", "--config", str(main), "--group",
               "root") == (0, "", "")
    code, out, err = run(capsys, "provision", "--config", str(main), "--group", "root")
    assert (code, out) == (0, "")
    assert err == (f"celeryd-admin: {creds} was written by celeryd-admin join for broker "
                   f"127.0.0.1; its account is managed on that broker host; nothing to "
                   f"provision here\n")
    code, out, err = run(capsys, "rotate-password", "--config", str(main), "--group", "root")
    assert code == 3 and err.count("\n") == 1 and "rotate it there" in err
    assert creds.read_bytes() == before and SECRET not in out + err
    assert fake.calls() == []
