"""celeryd-admin: provision the local broker account, join a remote broker, check the setup."""

import argparse
import sys
from urllib.parse import quote, unquote

from celeryd_pkg.errors import BrokerUnreachable, CelerydError, UsageError, report
from celeryd_pkg.provision import ROLES, check_name

__all__ = ["main", "parse_args", "parse_url", "mask_url", "join_string", "PORTS"]

PORTS = {"amqp": 5672, "amqps": 5671}
EXPECTED = "expected amqps://USER:PASSWORD@HOST[:PORT]/VHOST[?ca=...] (or amqp://)"


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
                                     "the credentials file; quiet on success. With --for-host: "
                                     "create an account for another host and print its join "
                                     "string"),
                       ("rotate-password", "provision with a new password")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--user", help="broker user (default celery; with --for-host, "
                                        "ROLE-NAME, e.g. worker-web1)")
        sub.add_argument("--vhost", default="celery", help="broker vhost (default celery)")
        group_option(sub)
        if name == "provision":
            sub.add_argument("--rotate-password", action="store_true",
                             help="set a new password on the broker and in the file")
            sub.add_argument("--for-host", metavar="NAME",
                             help="make an account for host NAME and print the join string "
                                  "for `celeryd-admin join -` there; each run issues a new "
                                  "password")
            sub.add_argument("--role", choices=sorted(ROLES), default="worker",
                             help="with --for-host: worker (runs tasks, full rights on the "
                                  "vhost) or client (submits tasks and reads its results "
                                  "only); default worker")
            sub.add_argument("--broker-host", metavar="ADDRESS",
                             help="with --for-host: the name or address the other host "
                                  "reaches this broker by (default: this host's FQDN)")
        defer_option(sub)
        config_option(sub)

    text = ("create a CA and a broker certificate, and configure RabbitMQ's TLS listener "
            "(port 5671); join strings printed afterwards carry the CA")
    sub = commands.add_parser("tls-setup", help=text, description=text)
    sub.add_argument("--name", action="append", default=[], metavar="HOST",
                     help="a host name or address the broker is reached by (repeatable; "
                          "default: this host's FQDN); each goes into the certificate")
    sub.add_argument("--rabbitmq-dir", default="/etc/rabbitmq", metavar="DIR",
                     help="RabbitMQ's configuration directory (default /etc/rabbitmq)")
    sub.add_argument("--rabbitmq-group", default="rabbitmq", metavar="GROUP",
                     help="group the broker runs as, to read its key (default rabbitmq)")
    config_option(sub)

    text = "delete the broker user (and vhost if asked) and the credentials file"
    sub = commands.add_parser("deprovision", help=text, description=text)
    account_options(sub)
    sub.add_argument("--delete-vhost", action="store_true",
                     help="delete the vhost too, with its queues and messages")
    defer_option(sub)
    config_option(sub)

    text = ("write the credentials (and the broker's CA) from a join string, and let the "
            "worker units reach the broker")
    sub = commands.add_parser("join", help=text, description=text)
    sub.add_argument("url", metavar="URL|-",
                     help="the join string from `celeryd-admin provision --for-host` "
                          "(amqps://USER:PASSWORD@HOST[:PORT]/VHOST[?ca=...]), or - to read it "
                          "from stdin (recommended: a command line is visible to every local "
                          "user)")
    sub.add_argument("--allow-plain", action="store_true",
                     help="accept plain amqp:// to another host without TLS (only on a "
                          "network you trust)")
    group_option(sub)
    config_option(sub)

    for name, text in (("drain", "make the running worker on this host take no new tasks "
                                 "while those in flight finish (before maintenance)"),
                       ("resume", "make a drained worker take tasks again")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("instance", nargs="?", metavar="NAME",
                         help="the worker instance celery-worker@NAME (default: "
                              "celery-worker)")
        config_option(sub)

    text = "diagnose config, DNS, TCP, AMQP login, vhost permissions and live workers"
    sub = commands.add_parser("check", help=text, description=text)
    config_option(sub)

    args = parser.parse_args(argv)
    if args.command == "rotate-password":
        args.command, args.rotate_password = "provision", True
        args.for_host = args.broker_host = None
        args.role = "worker"
    if args.command == "provision":
        if args.for_host:
            check_name("--for-host", args.for_host)
            if args.rotate_password or args.defer_if_absent:
                raise UsageError("celeryd-admin: --for-host: not with --rotate-password or "
                                 "--defer-if-absent (each --for-host run issues a new password)")
            if args.user is None:
                args.user = f"{args.role}-{args.for_host}"
        elif args.broker_host or args.role != "worker":
            raise UsageError("celeryd-admin: --role and --broker-host go with --for-host NAME")
        if args.user is None:
            args.user = "celery"
    if args.command in ("provision", "deprovision"):
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
    """Given a join string amqp[s]://USER:PASSWORD@HOST[:PORT]/VHOST[?ca=CERT]
    (percent-encoded; CERT is the broker's CA certificate as base64url DER), return
    {host, port, vhost, user, password, tls} plus ca (PEM) when given. Raise UsageError
    naming the wrong part, with the password masked."""
    text = text.strip()
    if not text:
        raise UsageError(f"celeryd-admin join: no URL given: {EXPECTED}")
    shown = mask_url(text.split("?")[0])

    def bad(part, why):
        raise UsageError(f"celeryd-admin join: {part}: {why} in {shown}: {EXPECTED}")

    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        bad("URL", "whitespace or control characters")
    scheme, sep, rest = text.partition("://")
    if not sep:
        bad("scheme", "no 'amqps://'")
    scheme = scheme.lower()
    if scheme not in PORTS:
        bad("scheme", f"'{scheme}' is not amqps or amqp")
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
    if "#" in hostpart:
        bad("URL", "a fragment (not supported)")
    hostpart, _, query = hostpart.partition("?")
    netloc, slash, path = hostpart.partition("/")
    host, port = _host_port(netloc, bad, PORTS[scheme])
    if not slash or not path:
        bad("vhost", "no vhost (end the URL with /VHOST, e.g. /celery)")
    if "/" in path:
        bad("vhost", "a '/' inside the vhost (write it as %2F)")
    vhost = unquote(path)
    if any(ord(c) < 32 for c in vhost):
        bad("vhost", "control characters")
    broker = {"host": host, "port": port, "vhost": vhost, "user": user, "password": password,
              "tls": scheme == "amqps"}
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        if name != "ca":
            bad("URL", f"an unknown parameter '{name}' (only ca=)")
        if scheme != "amqps":
            bad("ca", "a CA certificate with plain amqp:// (use amqps://)")
        from celeryd_pkg import tls

        try:
            broker["ca"] = tls.decode_ca(unquote(value))
        except ValueError:
            bad("ca", "not a certificate (copy the whole join string)")
    return broker


def join_string(broker, ca_file=None):
    """Return the join string for broker {host, port, vhost, user, password, tls}: an
    amqps:// URL carrying the CA certificate at ca_file (if any), or a plain amqp:// one."""
    from celeryd_pkg import tls

    scheme = "amqps" if broker["tls"] else "amqp"
    host = f"[{broker['host']}]" if ":" in broker["host"] else broker["host"]
    url = (f"{scheme}://{quote(broker['user'], safe='')}:{quote(broker['password'], safe='')}"
           f"@{host}:{broker['port']}/{quote(broker['vhost'], safe='')}")
    return f"{url}?ca={tls.encode_ca(ca_file)}" if ca_file else url


def _host_port(netloc, bad, default_port):
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
        return host.lower(), default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        bad("port", f"'{port_text}' is not a port number (1-65535)")
    return host.lower(), int(port_text)


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

    if args.for_host:
        return _provision_for_host(args)
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


def _provision_for_host(args):
    """Make the account of another host and print its join string (the only place its
    password is ever shown: pipe it straight into `celeryd-admin join -` over ssh)."""
    import socket

    from celeryd_pkg import config, provision, tls

    ca = tls.ca_files(config.config_paths(args.config)[0].parent)
    tls_on = ca.exists()
    if not tls_on:
        print("celeryd-admin: warning: no TLS on this broker yet (celeryd-admin tls-setup): "
              "this join string is plain amqp://, the password will cross the network "
              "unencrypted", file=sys.stderr)
    password = provision.provision_remote(provision.Rabbitmqctl(), args.user, args.vhost,
                                          args.role)
    broker = {"host": args.broker_host or socket.getfqdn(), "port": PORTS["amqps" if tls_on
                                                                          else "amqp"],
              "vhost": args.vhost, "user": args.user, "password": password, "tls": tls_on}
    print(join_string(broker, ca.cert if tls_on else None), flush=True)
    return 0


def cmd_tls_setup(args):
    import socket
    import subprocess
    from pathlib import Path

    from celeryd_pkg import config, tls

    names = args.name or [socket.getfqdn()]
    ca = tls.ca_files(config.config_paths(args.config)[0].parent)
    tls.setup(ca, args.rabbitmq_dir, names, args.rabbitmq_group)
    active = Path("/run/systemd/system").exists() and subprocess.run(
        ["systemctl", "is-active", "--quiet", "rabbitmq-server"]).returncode == 0
    if active:
        # The listener and certificate are read at start only.
        if subprocess.run(["systemctl", "restart", "rabbitmq-server"]).returncode:
            raise BrokerUnreachable("celeryd-admin tls-setup: rabbitmq-server did not "
                                    "restart: journalctl -u rabbitmq-server")
    else:
        print(f"celeryd-admin: TLS configured in {args.rabbitmq_dir}; it takes effect when "
              f"rabbitmq-server next starts", file=sys.stderr)
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
    import os

    from celeryd_pkg import config, credentials, dropin, files

    broker = parse_url(_read_url(args.url))
    gid = credentials.resolve_group(args.group)
    main_file, _, path, _ = config.config_paths(args.config)
    ca_pem = broker.pop("ca", None)
    if args.allow_plain:
        broker["allow_plain"] = True
    elif not broker["tls"] and not config.is_local_host(broker["host"]):
        print(f"celeryd-admin: warning: plain amqp:// to {broker['host']}: the password and "
              f"every task cross the network unencrypted; use an amqps:// join string "
              f"(celeryd-admin tls-setup on the broker host) or --allow-plain",
              file=sys.stderr)
    # Resolving the broker for the firewall drop-in may fail: before anything is written.
    dropin.allow_broker(broker["host"], os.environ.get("CELERYD_ROOT", "/"))
    if ca_pem:
        broker["ca_file"] = str(main_file.parent / "broker-ca.pem")
        files.replace(broker["ca_file"], ca_pem)
    credentials.write(path, broker, gid)
    print(f"joined {mask_url(join_string(broker))}; check with: celeryd-admin check")
    return 0


def cmd_drain_or_resume(args):
    from celeryd_pkg import config, control
    from celeryd_pkg.worker import node_name

    settings = config.load(args.config, instance=args.instance)
    node = node_name(settings, args.instance)
    queues = ", ".join(getattr(control, args.command)(settings, node))
    if args.command == "drain":
        print(f"{node}: draining: no new tasks from {queues}; tasks in flight finish "
              f"(celeryd-admin resume{' ' + args.instance if args.instance else ''} undoes it)")
    else:
        print(f"{node}: consuming from {queues} again")
    return 0


def cmd_check(args):
    from celeryd_pkg import check

    return check.run(args.config, out=lambda line: print(line, flush=True))


COMMANDS = {"provision": cmd_provision, "deprovision": cmd_deprovision, "join": cmd_join,
            "check": cmd_check, "tls-setup": cmd_tls_setup, "drain": cmd_drain_or_resume,
            "resume": cmd_drain_or_resume}


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
