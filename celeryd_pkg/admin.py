"""celeryd-admin: provision the local broker account, join a remote broker, check the setup."""

import argparse
import sys
from urllib.parse import quote, unquote

from celeryd_pkg.errors import CelerydError, UsageError, report

__all__ = ["main", "parse_args", "parse_url", "mask_url", "DEFAULT_PORT"]

DEFAULT_PORT = 5672
EXPECTED = "expected amqp://USER:PASSWORD@HOST[:PORT]/VHOST"


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 2, one line) instead of printing usage."""

    def error(self, message):
        raise UsageError(f"celeryd-admin: {message} (see celeryd-admin --help)")


def parse_args(argv):
    """Given argv, return the parsed arguments. Raise UsageError on bad input, before any
    broker I/O or file change."""
    parser = Parser(
        prog="celeryd-admin",
        description="Provision, join and check the broker account of the celeryd workers.",
        epilog="Exit codes: 0 success, 1 no live workers or rabbitmqctl failed, 2 bad "
               "arguments, 3 bad config or missing group, 4 broker unreachable, 5 broker "
               "refused access.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_option(sub):
        sub.add_argument("--config", metavar="FILE",
                         help="config file; the credentials file is beside it "
                              "(default /etc/celeryd/celeryd.yaml, /etc/celeryd/credentials)")

    def account_options(sub):
        sub.add_argument("--user", default="celery", help="broker user (default celery)")
        sub.add_argument("--vhost", default="celery", help="broker vhost (default celery)")

    def group_option(sub):
        sub.add_argument("--group", default="celery",
                         help="group that may read the credentials file (default celery)")

    def defer_option(sub):
        sub.add_argument("--defer-if-absent", action="store_true",
                         help="exit 0 with one line of advice when no local RabbitMQ is "
                              "installed or running (as the package's postinst runs it)")

    for name, text in (("provision", "create or re-check the local broker account and write "
                                     "the credentials file; quiet on success"),
                       ("rotate-password", "provision with a new password")):
        sub = commands.add_parser(name, help=text, description=text)
        account_options(sub)
        group_option(sub)
        if name == "provision":
            sub.add_argument("--rotate-password", action="store_true",
                             help="set a new password on the broker and in the file")
        defer_option(sub)
        config_option(sub)

    text = "delete the broker user (and vhost if asked) and the credentials file"
    sub = commands.add_parser("deprovision", help=text, description=text)
    account_options(sub)
    sub.add_argument("--delete-vhost", action="store_true",
                     help="delete the vhost too, with its queues and messages")
    defer_option(sub)
    config_option(sub)

    text = "write the credentials file from a remote broker's amqp:// URL"
    sub = commands.add_parser("join", help=text, description=text)
    sub.add_argument("url", metavar="URL|-",
                     help="amqp://USER:PASSWORD@HOST[:PORT]/VHOST, or - to read it from stdin "
                          "(recommended: a command line is visible to every local user)")
    group_option(sub)
    config_option(sub)

    text = "diagnose config, DNS, TCP, AMQP login, vhost permissions and live workers"
    sub = commands.add_parser("check", help=text, description=text)
    config_option(sub)

    args = parser.parse_args(argv)
    if args.command == "rotate-password":
        args.command, args.rotate_password = "provision", True
    if args.command in ("provision", "deprovision"):
        from celeryd_pkg.provision import check_name

        check_name("user", args.user)
        check_name("vhost", args.vhost)
    return args


def mask_url(text):
    """Return text with everything between the user name and the last '@' replaced by ***;
    text that is not URL-shaped enough to tell where a secret is becomes '***'."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    userinfo, at, hostpart = rest.rpartition("@")
    prefix = f"{scheme}://" if sep else ""
    if not at:
        return f"{prefix}***" if ":" in rest or not sep else f"{prefix}{rest}"
    user = userinfo.partition(":")[0]
    return f"{prefix}{user}:***@{hostpart}" if ":" in userinfo else f"{prefix}{userinfo}@{hostpart}"


def parse_url(text):
    """Given a join string amqp://USER:PASSWORD@HOST[:PORT]/VHOST (percent-encoded), return
    {host, port, vhost, user, password}. Raise UsageError naming the wrong part, with the
    password masked."""
    text = text.strip()
    if not text:
        raise UsageError(f"celeryd-admin join: no URL given: {EXPECTED}")
    shown = mask_url(text)

    def bad(part, why):
        raise UsageError(f"celeryd-admin join: {part}: {why} in {shown}: {EXPECTED}")

    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        bad("URL", "whitespace or control characters")
    scheme, sep, rest = text.partition("://")
    if not sep:
        bad("scheme", "no 'amqp://'")
    if scheme.lower() == "amqps":
        raise UsageError(f"celeryd-admin join: {shown}: amqps:// (TLS) comes in a later release; "
                         f"use amqp:// for now")
    if scheme.lower() != "amqp":
        bad("scheme", f"'{scheme}' is not amqp")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        bad("user", "no USER:PASSWORD@ part")
    user_text, colon, password_text = userinfo.partition(":")
    user, password = unquote(user_text), unquote(password_text)
    if not user or any(ord(c) < 32 for c in user):
        bad("user", "empty or invalid user name")
    if not colon or not password:
        bad("password", "no password")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        bad("password", "control characters")
    if "?" in hostpart or "#" in hostpart:
        bad("URL", "a query or fragment (not supported)")
    netloc, slash, path = hostpart.partition("/")
    host, port = _host_port(netloc, bad)
    if not slash or not path:
        bad("vhost", "no vhost (end the URL with /VHOST, e.g. /celery)")
    if "/" in path:
        bad("vhost", "a '/' inside the vhost (write it as %2F)")
    vhost = unquote(path)
    if any(ord(c) < 32 for c in vhost):
        bad("vhost", "control characters")
    return {"host": host, "port": port, "vhost": vhost, "user": user, "password": password}


def _host_port(netloc, bad):
    if netloc.startswith("["):
        host, bracket, after = netloc[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            bad("host", "a malformed [IPv6] address")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = netloc.partition(":")
        port_text = port_text if colon else None
    if not host or not all(c.isalnum() or c in ".-_:" for c in host):
        bad("host", "no host name or an invalid one")
    if port_text is None:
        return host.lower(), DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        bad("port", f"'{port_text}' is not a port number (1-65535)")
    return host.lower(), int(port_text)


def _display(broker):
    host = f"[{broker['host']}]" if ":" in broker["host"] else broker["host"]
    return (f"amqp://{quote(broker['user'], safe='')}:***@{host}:{broker['port']}/"
            f"{quote(broker['vhost'], safe='')}")


def _read_url(value):
    if value != "-":
        return value
    if sys.stdin is None:
        raise UsageError("celeryd-admin join: no standard input to read the URL from")
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("broker URL (not echoed): ")
    return sys.stdin.read()


def cmd_provision(args):
    from celeryd_pkg import config, credentials, provision

    path = config.config_paths(args.config)[2]
    gid = credentials.resolve_group(args.group)
    ctl = provision.Rabbitmqctl()
    try:
        provision.provision(ctl, path, args.user, args.vhost, gid, rotate=args.rotate_password)
    except provision.NodeDown:
        if not args.defer_if_absent:
            raise
        print(provision.DEFER_MESSAGE, file=sys.stderr)
    return 0


def cmd_deprovision(args):
    from celeryd_pkg import config, credentials, provision

    path = config.config_paths(args.config)[2]
    ctl = provision.Rabbitmqctl()
    try:
        provision.deprovision(ctl, path, args.user, args.vhost, args.delete_vhost)
    except provision.NodeDown:
        if not args.defer_if_absent:
            raise
        credentials.remove(path)
        print(f"celeryd: no running RabbitMQ broker here; broker user '{args.user}' not "
              f"removed", file=sys.stderr)
    return 0


def cmd_join(args):
    from celeryd_pkg import config, credentials

    broker = parse_url(_read_url(args.url))
    gid = credentials.resolve_group(args.group)
    path = config.config_paths(args.config)[2]
    credentials.write(path, broker, gid)
    print(f"joined {_display(broker)}; run celeryd-admin check")
    return 0


def cmd_check(args):
    from celeryd_pkg import check

    return check.run(args.config, out=lambda line: print(line, flush=True))


COMMANDS = {"provision": cmd_provision, "deprovision": cmd_deprovision, "join": cmd_join,
            "check": cmd_check}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        return COMMANDS[args.command](args)
    except CelerydError as error:
        return report(error, "celeryd-admin")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
