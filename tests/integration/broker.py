"""A private RabbitMQ node on loopback, started as a plain process for the tests."""

import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RabbitMQ:
    """One rabbitmq-server with its own node name, ports, data, cookie and epmd."""

    def __init__(self, base, tls_dir=None, client_certificates=False):
        """tls_dir: a directory with ca.pem, server.pem and server.key (as celeryd-admin
        tls-setup writes them) to open a TLS listener on tls_port too; client_certificates:
        that listener demands a client certificate signed by the same CA."""
        self.base = Path(base)
        self.port = free_port()
        self.tls_port = free_port() if tls_dir else None
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"test-{self.port}@localhost"
        self.process = None
        self.epmd = None
        home = self.base / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        conf = "loopback_users = none\nlisteners.tcp.default = 127.0.0.1:%d\n" % self.port
        if tls_dir:
            conf += (f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                     f"ssl_options.cacertfile = {tls_dir}/ca.pem\n"
                     f"ssl_options.certfile = {tls_dir}/server.pem\n"
                     f"ssl_options.keyfile = {tls_dir}/server.key\n"
                     f"ssl_options.verify = {'verify_peer' if client_certificates else 'verify_none'}\n"
                     f"ssl_options.fail_if_no_peer_cert = {str(client_certificates).lower()}\n")
        (self.base / "rabbitmq.conf").write_text(conf)
        (self.base / "enabled_plugins").write_text("[].\n")
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
        }

    def start(self, timeout=120):
        if self.epmd is None:
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = open(self.base / "server.out", "ab")
        self.process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        # await_startup fails at once until the node has registered with epmd: poll.
        deadline = time.monotonic() + timeout
        while self.ctl("await_startup", check=False, timeout=timeout).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq-server did not start; see {self.base}/server.out")
            time.sleep(0.5)
        return self

    def ctl(self, *args, input=None, timeout=60, check=True):
        """Run rabbitmqctl against this node; return the CompletedProcess."""
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", *args], env=self.env, input=input,
            capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args[0]} failed: {result.stderr or result.stdout}")
        return result

    def stop(self):
        if self.process is None:
            return
        self.ctl("shutdown", check=False, timeout=60)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def close(self):
        self.stop()
        if self.epmd is not None:
            self.epmd.terminate()
            self.epmd.wait(timeout=10)
            self.epmd = None
        # Erlang helpers (inet_gethost, erl_child_setup) die with the node; make sure.
        subprocess.run(["pkill", "-f", "--", f"-sname {self.node}"], check=False)

    def add_account(self, user, password, vhost):
        """Create a vhost and a user with full rights on it only (password on stdin)."""
        self.ctl("add_vhost", vhost, check=False)
        self.ctl("add_user", user, input=password + "\n")
        self.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")


def wait_for_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


__all__ = ["RabbitMQ", "free_port", "wait_for_port"]
