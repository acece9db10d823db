"""celeryd-admin's command line: the parser assembled from each command module's declaration."""

import argparse
import sys
from collections import namedtuple

from celeryd_pkg.errors import CelerydError, UsageError, report

__all__ = ["Command", "main", "parse_args", "config_option", "group_option", "defer_option"]

# One command: its name and help, action(args) -> exit code, add_arguments(parser) and
# validate(args), which raises UsageError after parsing and before any broker I/O.
Command = namedtuple("Command", "name help action add_arguments validate", defaults=(None,))


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 2, one line) instead of printing usage."""

    def error(self, message):
        raise UsageError(f"celeryd-admin: {message} (see celeryd-admin --help)")


def config_option(parser):
    parser.add_argument("--config", metavar="FILE",
                        help="config file; the credentials file is beside it "
                             "(default /etc/celeryd/celeryd.yaml, /etc/celeryd/credentials)")


def group_option(parser):
    parser.add_argument("--group", default="celery",
                        help="group that may read the credentials file (default celery)")


def defer_option(parser):
    parser.add_argument("--defer-if-absent", action="store_true",
                        help="exit 0 with one line of advice when no local RabbitMQ is "
                             "installed or running (as the package's postinst runs it)")


def commands():
    """Return every Command, in the order --help lists them."""
    from celeryd_pkg.admin import (
        check, control, dead, join, provision, status, storesetup, tls, trace,
    )

    return (*provision.COMMANDS, *tls.COMMANDS, *storesetup.COMMANDS, *join.COMMANDS,
            *control.COMMANDS, *check.COMMANDS, *status.COMMANDS, *dead.COMMANDS,
            *trace.COMMANDS)


def parse_args(argv):
    """Given argv, return the parsed arguments (args.command_spec is the Command). Raise
    UsageError on bad input, before any broker I/O or file change."""
    parser = Parser(
        prog="celeryd-admin",
        description="Provision, join and check the broker account of the celeryd workers.",
        epilog="Exit codes: 0 success, 1 no live workers, status DEGRADED, rabbitmqctl or "
               "journalctl failed, or a traced task has no journal entry, 2 bad arguments, "
               "3 bad config, missing group, no journalctl or no redis-server, 4 broker or "
               "result store unreachable, 5 broker or result store refused access, 6 journalctl "
               "timed out.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(command_spec=command)
    args = parser.parse_args(argv)
    if args.command_spec.validate:
        args.command_spec.validate(args)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        return args.command_spec.action(args)
    except CelerydError as error:
        return report(error, "celeryd-admin")
    except KeyboardInterrupt:
        return 130
