"""Unit tests: rabbitmqctl's arguments, stdin and errors, against a fake rabbitmqctl."""

import pytest

from celeryd_pkg.admin import provision, rabbitmqctl
from celeryd_pkg.errors import BrokerUnreachable, CelerydError
from tests.unit.fake_rabbitmqctl import assert_secret_only_on_stdin


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
    with pytest.raises(rabbitmqctl.NodeDown) as error:
        fake.ctl(FAKE_CTL_DOWN="1").users()
    assert isinstance(error.value, BrokerUnreachable) and error.value.exit_code == 4
    assert "unable to perform an operation on node 'rabbit@fake'" in error.value.message
    assert "Please see" not in error.value.message


def test_a_missing_rabbitmqctl_is_node_down(tmp_path):
    ctl = rabbitmqctl.Rabbitmqctl(env={"CELERYD_RABBITMQCTL": str(tmp_path / "nope")})
    with pytest.raises(rabbitmqctl.NodeDown) as error:
        ctl.vhosts()
    assert "not found" in error.value.message


def test_exit_code_69_without_the_node_message_is_not_node_down(fake):
    # list_user_permissions of an unknown user exits 69 too.
    with pytest.raises(CelerydError) as error:
        fake.ctl().permissions("ghost")
    assert not isinstance(error.value, rabbitmqctl.NodeDown)


def test_the_default_rabbitmqctl_is_the_system_one():
    assert rabbitmqctl.Rabbitmqctl(env={}).path == "/usr/sbin/rabbitmqctl"
