"""Unit tests: celeryd-admin's command line, assembled from the command modules."""

import re

import pytest

from celeryd_pkg.admin import cli, provision
from tests.unit.admin.conftest import run


def test_provision_leaves_user_and_vhost_to_the_config_and_the_group_is_celery():
    args = cli.parse_args(["provision"])
    assert (args.user, args.vhost, args.group, args.rotate_password, args.defer_if_absent,
            args.config) == (None, None, "celery", False, False, None)
    assert args.command_spec.action is provision.action_provision


def test_rotate_password_is_provision_with_a_new_password():
    args = cli.parse_args(["rotate-password", "--user", "u"])
    assert (args.command_spec.action, args.rotate_password, args.user, args.for_host) == (
        provision.action_provision, True, "u", None)


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["provision", "--bogus"], ["join"], ["join", "a", "b"],
    ["provision", "--user="], ["provision", "--user=-rf"], ["deprovision", "--vhost=a b"],
    ["check", "extra"],
])
def test_bad_arguments_exit_2_with_one_line_and_no_traceback(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("celeryd-admin") and err.count("\n") == 1
    assert "Traceback" not in err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    # The command column of the subcommand list: one name per line, whole words only.
    listed = re.findall(r"^    ([a-z][a-z-]+)", out, re.M)
    assert listed == ["provision", "rotate-password", "deprovision", "tls-setup", "store-setup",
                      "join", "drain", "resume", "check", "status", "dead", "trace"]
