"""celeryd-admin provision, rotate-password and deprovision: the broker accounts, idempotently.

The local account (the workers' own, written to the credentials file) and accounts for other
hosts (printed once, as a join string). Users and vhosts default to the loaded config.
"""

import argparse
import logging
import secrets
import sys

from celeryd_pkg import account, config
from celeryd_pkg.admin import storeaccounts
from celeryd_pkg.admin.cli import Command, config_option, defer_option, group_option
from celeryd_pkg.admin.rabbitmqctl import FULL, NodeDown, Rabbitmqctl, check_name
from celeryd_pkg.errors import CelerydError, ConfigError, UsageError
from celeryd_pkg.schema import check_host

__all__ = ["DEFER_MESSAGE", "ROLES", "COMMANDS", "provision", "deprovision",
           "provision_remote", "new_password"]

logger = logging.getLogger(__name__)

DEFER_MESSAGE = ("celeryd: no running RabbitMQ broker here; the setup finishes by itself when "
                 "rabbitmq-server starts here, or run: celeryd-admin provision (or "
                 "celeryd-admin join for a remote broker)")
# A submit-only client (configure, write, read): it may publish to task exchanges (named
# after their queues) but not to the default exchange, the workers' control (pidbox) and
# event exchanges or amq.*; it reads only its own direct reply-to; it declares nothing.
CLIENT = ("^$", r"^(?!amq\.|celeryev$|.*pidbox$).+$", r"^amq\.rabbitmq\.reply-to$")
# A broker host joining the cluster gets an account of its own for check and status.
ROLES = {"worker": FULL, "client": CLIENT, "broker": FULL}


def new_password():
    """Return a fresh broker password from the CSPRNG (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def provision(ctl, path, user, vhost, gid, rotate=False):
    """Make sure vhost, user (with the password in the credentials file at path) and full
    permissions on that vhost only exist, writing the file when it lacks a usable password
    or rotate is set. Return the list of changes made (empty when everything was in place).
    Raise NodeDown when there is no broker to talk to."""
    check_name("user", user)
    check_name("vhost", vhost)
    # celeryd-provision.service may run this as RabbitMQ comes up while an admin runs it
    # too: one at a time, or both would set a password.
    with account.locked(path):
        return _provision(ctl, path, user, vhost, gid, rotate)


def _provision(ctl, path, user, vhost, gid, rotate):
    changes = []
    stored = account.load(path)
    password = stored.get("password") if stored.get("user", user) == user else None
    exists = user in ctl.users()
    granted = ctl.permissions(user).get(vhost) if exists else None
    # Permissions on the vhost prove it exists: a re-run needs three reads and no write.
    if granted is None and vhost not in ctl.vhosts():
        ctl.add_vhost(vhost)
        changes.append(f"added vhost {vhost}")
    if rotate or not password:
        # Temp file first, then the broker, then the rename: a failure leaves a matching pair.
        fresh = new_password()
        with account.staged(path, {"vhost": vhost, "user": user, "password": fresh}, gid,
                            results=account.load_results(path)):
            if exists:
                ctl.change_password(user, fresh)
            else:
                ctl.add_user(user, fresh)
        changes.append(f"{'set a new password for' if exists else 'added'} user {user}; "
                       f"wrote {path}")
    elif not exists:
        ctl.add_user(user, password)
        changes.append(f"added user {user} with the password from {path}")
    elif not ctl.authenticate(user, password):
        # The file is the source of truth: the workers read it.
        ctl.change_password(user, password)
        changes.append(f"reset the password of user {user} to the one in {path}")
    elif stored.get("vhost", vhost) != vhost:
        # Same password, another vhost: the workers must follow the file to the new one.
        account.save(path, {**stored, "vhost": vhost, "user": user}, gid,
                     results=account.load_results(path))
        changes.append(f"wrote vhost {vhost} to {path}")
    if granted != FULL:
        ctl.set_permissions(vhost, user)
        changes.append(f"granted user {user} full permissions on vhost {vhost}")
    for change in changes:
        logger.info("celeryd-admin: %s", change)
    return changes


def provision_remote(ctl, user, vhost, role):
    """Make an account for another host: user with a fresh password and the role's
    permissions (ROLES) on vhost only. Return the password, for the join string: the broker
    host keeps no copy, so every call issues a new one (and the old join string stops
    working)."""
    check_name("user", user)
    check_name("vhost", vhost)
    if vhost not in ctl.vhosts():
        ctl.add_vhost(vhost)
    password = new_password()
    if user in ctl.users():
        ctl.change_password(user, password)
    else:
        ctl.add_user(user, password)
    ctl.set_permissions(vhost, user, ROLES[role])
    return password


def deprovision(ctl, path, user, vhost, delete_vhost=False):
    """Delete the broker user (and vhost if asked), then the credentials file (path None: this
    host's account is not the one deleted). Return the list of changes made (empty when all
    was already gone). Raise NodeDown as provision does."""
    check_name("user", user)
    check_name("vhost", vhost)
    changes = []
    if ctl.delete_user(user):
        changes.append(f"deleted user {user}")
    if delete_vhost and ctl.delete_vhost(vhost):
        changes.append(f"deleted vhost {vhost}")
    if path is not None and account.remove(path):
        changes.append(f"removed {path}")
    return changes


def operator_account(config_file):
    """Return (user, vhost) as the operator configured them: celeryd.yaml, conf.d and the
    environment, not the credentials file, which provision itself writes (it would otherwise
    outrank an operator's later broker.user)."""
    settings = config.load(config_file, with_credentials=False)
    return settings.broker.user, settings.broker.vhost


def action_provision(args):
    if args.for_host:
        from celeryd_pkg.admin import forhost

        return forhost.provision_for_host(args)
    user, vhost = operator_account(args.config)
    user, vhost = check_name("user", args.user or user), check_name("vhost", args.vhost or vhost)
    path = config.config_paths(args.config)[2]
    joined = account.load(path).get("host")
    if joined:
        return _leave_joined_account(args, path, joined)
    gid = account.resolve_group(args.group)
    try:
        provision(Rabbitmqctl(), path, user, vhost, gid, rotate=args.rotate_password)
    except NodeDown:
        if not args.defer_if_absent:
            raise
        print(DEFER_MESSAGE, file=sys.stderr)
    return 0


def _leave_joined_account(args, path, host):
    """The credentials name a broker host, so `join` wrote them: this host uses that broker's
    account, which provision (the package's postinst too) must not replace with a local one."""
    message = (f"celeryd-admin: {path} was written by celeryd-admin join for broker {host}; "
               f"its account is managed on that broker host")
    if args.rotate_password:
        raise ConfigError(f"{message}: rotate it there (celeryd-admin provision --for-host "
                          f"NAME | ssh THIS-HOST celeryd-admin join -)")
    if not args.defer_if_absent:
        print(f"{message}; nothing to provision here", file=sys.stderr)
    return 0


def action_deprovision(args):
    path = config.config_paths(args.config)[2]
    try:  # the account in use: the credentials file's, else the operator's
        settings = config.load(args.config)
        own_user, own_vhost = settings.broker.user, settings.broker.vhost
    except CelerydError:
        if not (args.user and args.vhost):
            raise
        own_user = own_vhost = None
    user, vhost = args.user or own_user, args.vhost or own_vhost
    if own_user is not None and user != own_user:
        path = None  # another host's account (provision --for-host): ours stays
    check_name("user", user)
    check_name("vhost", vhost)
    storeaccounts.remove_if_here(args.config, user)
    try:
        deprovision(Rabbitmqctl(), path, user, vhost, args.delete_vhost)
    except NodeDown:
        if not args.defer_if_absent:
            raise
        if path is not None:
            account.remove(path)
        print(f"celeryd: no running RabbitMQ broker here; broker user '{user}' not "
              f"removed", file=sys.stderr)
    return 0


def _account_options(parser, for_host=False):
    user_help = "broker user (default broker.user of the config, celery"
    parser.add_argument("--user", help=user_help + ("; with --for-host, ROLE-NAME, e.g. "
                                                    "worker-web1)" if for_host else ")"))
    parser.add_argument("--vhost", help="broker vhost (default broker.vhost of the config, "
                                        "celery)")


def _provision_arguments(parser):
    _account_options(parser, for_host=True)
    group_option(parser)
    parser.add_argument("--rotate-password", action="store_true",
                        help="set a new password on the broker and in the file")
    parser.add_argument("--for-host", metavar="NAME",
                        help="make an account for host NAME and print the join string for "
                             "`celeryd-admin join -` there; each run issues a new password")
    parser.add_argument("--role", choices=sorted(ROLES), default="worker",
                        help="with --for-host: worker (runs tasks, full rights on the vhost), "
                             "client (submits tasks and reads its results only) or broker "
                             "(NAME's rabbitmq-server joins this one's cluster); default worker")
    parser.add_argument("--broker-host", metavar="ADDRESS[,ADDRESS...]", type=broker_hosts,
                        help="with --for-host: the names or addresses the other host reaches "
                             "the broker by, every node of a cluster in order (default: "
                             "broker.hosts of the config, else this host's FQDN)")
    defer_option(parser)
    config_option(parser)


def broker_hosts(text):
    """--broker-host's value: a node, or every node of a cluster, comma-separated."""
    hosts = [part.strip() for part in text.split(",")]
    problem = next(filter(None, map(check_host, hosts)), None)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return hosts


def _validate_provision(args):
    if args.for_host:
        check_name("--for-host", args.for_host)
        if args.rotate_password or args.defer_if_absent:
            raise UsageError("celeryd-admin: --for-host: not with --rotate-password or "
                             "--defer-if-absent (each --for-host run issues a new password)")
    elif args.broker_host or args.role != "worker":
        raise UsageError("celeryd-admin: --role and --broker-host go with --for-host NAME")
    _validate_names(args)


def _validate_names(args):
    for kind in ("user", "vhost"):
        if getattr(args, kind) is not None:
            check_name(kind, getattr(args, kind))


def _rotate_arguments(parser):
    _account_options(parser)
    group_option(parser)
    defer_option(parser)
    config_option(parser)
    parser.set_defaults(rotate_password=True, for_host=None, broker_host=None, role="worker")


def _deprovision_arguments(parser):
    _account_options(parser)
    parser.add_argument("--delete-vhost", action="store_true",
                        help="delete the vhost too, with its queues and messages")
    defer_option(parser)
    config_option(parser)


COMMANDS = (
    Command("provision", "create or re-check the local broker account and write the "
                         "credentials file; quiet on success. With --for-host: create an "
                         "account for another host and print its join string",
            action_provision, _provision_arguments, _validate_provision),
    Command("rotate-password", "provision with a new password", action_provision,
            _rotate_arguments, _validate_names),
    Command("deprovision", "delete the broker user (and vhost if asked) and the credentials "
                           "file", action_deprovision, _deprovision_arguments, _validate_names),
)
