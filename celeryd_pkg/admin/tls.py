"""celeryd-admin tls-setup: a small CA of our own and RabbitMQ's TLS listener.

The broker host keeps the CA key; workers and clients get only the CA certificate, inside
their join string. openssl does the cryptography (no Python crypto library needed).
"""

import contextlib
import grp
import ipaddress
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from celeryd_pkg import account, config, files
from celeryd_pkg.admin import systemctl
from celeryd_pkg.admin.cli import Command, config_option
from celeryd_pkg.errors import BrokerUnreachable, CelerydError, ConfigError, UsageError

__all__ = ["CaFiles", "ca_files", "setup", "install_server", "server_files", "RABBITMQ_CONF",
           "COMMANDS"]

CA_DAYS, SERVER_DAYS = 3650, 825
CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
RABBITMQ_CONF = """\
# Written by celeryd-admin tls-setup: TLS (amqps) for workers and clients on other hosts.
# The plain listener (5672) stays for this host's own worker; remote ones use this one.
listeners.ssl.default = {port}
ssl_options.cacertfile = {dir}/ca.pem
ssl_options.certfile = {dir}/server.pem
ssl_options.keyfile = {dir}/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
"""


class CaFiles:
    """Where the CA lives on the broker host: DIR/ca.pem (public) and DIR/ca.key (root 0600)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.cert, self.key = self.dir / "ca.pem", self.dir / "ca.key"

    def exists(self):
        return self.cert.exists()


def ca_files(etc_dir):
    """Return the CaFiles of the celeryd config directory etc_dir."""
    return CaFiles(Path(etc_dir) / "tls")


def setup(ca, rabbitmq_dir, names, group="rabbitmq", port=account.PORTS["amqps"],
          openssl="openssl"):
    """Create the CA (kept if present), a broker certificate for names (host names or IP
    addresses, all in its subjectAltName) signed by it, and RabbitMQ's conf.d file for a TLS
    listener on port. Return the list of files written."""
    if not names:
        raise UsageError("celeryd-admin tls-setup: give at least one --name (the host name or "
                         "address workers and clients will use to reach the broker)")
    san = ",".join(_san_entry(name) for name in names)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"celeryd-admin tls-setup: group '{group}' does not exist: install "
                          f"rabbitmq-server first (or pass --rabbitmq-group)") from None
    written = []
    ca.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not ca.exists():
        with _umask(0o077):
            _openssl(openssl, "req", "-x509", *CURVE, "-keyout", ca.key, "-out", ca.cert,
                     "-days", str(CA_DAYS), "-subj", f"/CN=celeryd CA {names[0]}",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        os.chmod(ca.cert, 0o644)
        written += [str(ca.cert), str(ca.key)]
    with tempfile.TemporaryDirectory(prefix="celeryd-tls.") as tmp:
        tmp = Path(tmp)
        extensions = tmp / "server.ext"
        extensions.write_text(
            f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
            f"keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        _openssl(openssl, "req", "-new", *CURVE, "-keyout", tmp / "server.key",
                 "-out", tmp / "server.csr", "-subj", f"/CN={names[0]}")
        _openssl(openssl, "x509", "-req", "-in", tmp / "server.csr", "-CA", ca.cert,
                 "-CAkey", ca.key, "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                 "-days", str(SERVER_DAYS), "-extfile", extensions, "-out", tmp / "server.pem")
        written += install_server(rabbitmq_dir, ca.cert.read_bytes(),
                                  (tmp / "server.pem").read_bytes(),
                                  (tmp / "server.key").read_bytes(), gid, port)
    return written


def install_server(rabbitmq_dir, ca_pem, cert_pem, key_pem, gid, port=account.PORTS["amqps"],
                   prog="celeryd-admin tls-setup"):
    """Install the broker's certificate, key and CA under rabbitmq_dir/tls (the key readable
    by group gid, RabbitMQ's, only) and the conf.d file of its TLS listener; return the paths.
    tls-setup and a broker joining a cluster (which takes the first node's) share it."""
    rabbitmq_dir = Path(rabbitmq_dir)
    out, conf = rabbitmq_dir / "tls", rabbitmq_dir / "conf.d" / "50-celeryd-tls.conf"
    files.replace(out / "server.key", key_pem, prog, 0o640, gid)
    files.replace(out / "server.pem", cert_pem, prog)
    files.replace(out / "ca.pem", ca_pem, prog)
    files.replace(conf, RABBITMQ_CONF.format(port=port, dir=out), prog)
    return [str(out / name) for name in ("server.key", "server.pem", "ca.pem")] + [str(conf)]


def server_files(rabbitmq_dir):
    """Return the broker's (certificate, key) PEM bytes that tls-setup installed, or None."""
    out = Path(rabbitmq_dir) / "tls"
    try:
        return (out / "server.pem").read_bytes(), (out / "server.key").read_bytes()
    except FileNotFoundError:
        return None


def _san_entry(name):
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        pass
    if not name or not all(c.isalnum() or c in ".-" for c in name):
        raise UsageError(f"celeryd-admin tls-setup: --name {name!r}: expected a host name or "
                         f"an IP address")
    return f"DNS:{name}"


def _openssl(openssl, *args):
    try:
        result = subprocess.run([openssl, *map(str, args)], capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise CelerydError("celeryd-admin tls-setup: openssl not found: apt install "
                           "openssl") from None
    if result.returncode:
        detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise CelerydError(f"celeryd-admin tls-setup: openssl {args[0]} failed: {detail}")


@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def action_tls_setup(args):
    import socket

    names = args.name or [socket.getfqdn()]
    setup(ca_files(config.config_paths(args.config)[0].parent), args.rabbitmq_dir, names,
          args.rabbitmq_group)
    if systemctl.is_active("rabbitmq-server"):
        # The listener and certificate are read at start only.
        if not systemctl.restart("rabbitmq-server"):
            raise BrokerUnreachable("celeryd-admin tls-setup: rabbitmq-server did not "
                                    "restart: journalctl -u rabbitmq-server")
    else:
        print(f"celeryd-admin: TLS configured in {args.rabbitmq_dir}; it takes effect when "
              f"rabbitmq-server next starts", file=sys.stderr)
    return 0


def _arguments(parser):
    parser.add_argument("--name", action="append", default=[], metavar="HOST",
                        help="a host name or address the broker is reached by (repeatable; "
                             "default: this host's FQDN); each goes into the certificate")
    parser.add_argument("--rabbitmq-dir", default="/etc/rabbitmq", metavar="DIR",
                        help="RabbitMQ's configuration directory (default /etc/rabbitmq)")
    parser.add_argument("--rabbitmq-group", default="rabbitmq", metavar="GROUP",
                        help="group the broker runs as, to read its key (default rabbitmq)")
    config_option(parser)


COMMANDS = (
    Command("tls-setup", "create a CA and a broker certificate, and configure RabbitMQ's TLS "
                         "listener (port 5671); join strings printed afterwards carry the CA",
            action_tls_setup, _arguments),
)
