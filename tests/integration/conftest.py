"""Fixtures for tests against a real RabbitMQ and real worker processes."""

import os
import pwd
import queue
import secrets
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from celeryd_pkg import account as celeryd_account
from tests.integration.broker import RabbitMQ, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
# Debian's python3 by default; another interpreter (say a venv with a newer Celery) on request.
PYTHON = os.environ.get("CELERYD_TEST_PYTHON", "/usr/bin/python3")


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory):
    """A private RabbitMQ node on loopback for the whole session."""
    node = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    try:
        node.start()
        yield node
    finally:
        node.close()


def vhost_account(rabbitmq, name):
    """Make a user with full rights on a vhost of its own, both called name, as `celeryd-admin
    provision` makes one; return its {user, password, vhost}."""
    creds = {"user": name, "password": secrets.token_urlsafe(24), "vhost": name}
    rabbitmq.add_account(creds["user"], creds["password"], creds["vhost"])
    return creds


@pytest.fixture(scope="session")
def account(rabbitmq):
    """The tests' shared account."""
    return vhost_account(rabbitmq, "celeryd-test")


class RedisServer:
    """A private redis-server on loopback (a free port, its own --dir), for results.backend
    redis. The default user has no password here: the ACL accounts are proven in
    test_store_acl.py. stop() and start() again keep the port and the directory. tls_dir: a
    directory with ca.pem, server.pem and server.key (as tls-setup writes them): TLS only,
    on port."""

    def __init__(self, base, tls_dir=None):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_dir = tls_dir
        self.process = None

    def start(self, appendonly=False):
        listen = ["--port", str(self.port)]
        if self.tls_dir:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                      "--tls-cert-file", f"{self.tls_dir}/server.pem",
                      "--tls-key-file", f"{self.tls_dir}/server.key",
                      "--tls-ca-cert-file", f"{self.tls_dir}/ca.pem"]
        log = open(self.base / "redis.log", "ab")
        self.process = subprocess.Popen(
            ["/usr/bin/redis-server", *listen, "--bind", "127.0.0.1", "--dir", str(self.base),
             "--save", "", "--appendonly", "yes" if appendonly else "no", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(self.base))
        log.close()
        wait_for_port(self.port)
        return self

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self):
        """SIGTERM: redis-server shuts down cleanly (with --save "" it writes nothing: call
        client().save() first to keep the data)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def results_config(self):
        """The celeryd.yaml lines that store results here."""
        return f"results:\n  backend: redis\n  host: 127.0.0.1\n  port: {self.port}\n"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A private redis-server for one test module (a test may stop and start it again)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


def write_config(directory, rabbitmq, account, extra=""):
    """Write celeryd.yaml and credentials into directory; return the celeryd.yaml path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    main = directory / "celeryd.yaml"
    main.write_text(
        f"broker:\n  host: 127.0.0.1\n  port: {rabbitmq.port}\n  vhost: {account['vhost']}\n"
        f"  user: {account['user']}\n" + extra)
    credentials = directory / "credentials"
    # As celeryd-admin writes it (JSON, read without yaml).
    credentials.write_text(celeryd_account.render({"password": account["password"]}))
    credentials.chmod(0o640)
    return main


@pytest.fixture
def config_file(tmp_path, rabbitmq, account):
    return write_config(tmp_path / "etc", rabbitmq, account)


def clean_env(**extra):
    """The environment for our commands: Debian's python first, nothing of the caller's
    CELERYD_* or NOTIFY_SOCKET."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CELERYD_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_module(module, *args, env=None, timeout=60, input=None, user=None):
    """Run `python3 -m module args` from the source tree; return the CompletedProcess."""
    command = [PYTHON, "-m", module, *args]
    if user:
        gid = pwd.getpwnam(user).pw_gid
        command = ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", *command]
    return subprocess.run(command, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout, input=input, cwd="/")


def submit(config, *args, **kwargs):
    return run_module("celeryd_pkg.submit", "--config", str(config), *args, **kwargs)


class WorkerProcess:
    """A real `python3 -m celeryd_pkg.worker` (or another module: celeryd_pkg.beat), with a
    notify socket standing in for systemd."""

    def __init__(self, config, tmp_path, *args, watchdog_usec=None, module="celeryd_pkg.worker",
                 env=None):
        self.socket_path = str(tmp_path / f"notify-{secrets.token_hex(4)}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.socket_path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.inbox = queue.Queue()
        self.closed = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        extra = {"NOTIFY_SOCKET": self.socket_path, **(env or {})}
        if watchdog_usec:
            extra["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log_path = tmp_path / f"worker-{secrets.token_hex(4)}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", module, "--config", str(config), *args],
            env=clean_env(**extra), stdout=self.log, stderr=subprocess.STDOUT, cwd="/")

    def _read(self):
        """Read every datagram as systemd does, whether or not the test is waiting for one:
        the socket holds only net.unix.max_dgram_qlen (10) of them, and each STATUS= sent to
        a full one stalls the worker's event loop for notify.SEND_TIMEOUT."""
        while not self.closed.is_set():
            try:
                self.inbox.put(self.sock.recv(65536).decode())
            except OSError:  # the timeout: check whether to stop
                pass

    def receive(self, timeout):
        """Collect notify datagrams for up to timeout seconds; return the new ones."""
        new = []
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                data = self.inbox.get(timeout=remaining)
            except queue.Empty:
                break
            new.append(data)
            self.messages.append(data)
            if "READY=1" in data or "STOPPING=1" in data:
                break
        return new

    def wait_for(self, field, timeout=60):
        """Wait until a datagram containing field arrives; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.output()}")
            for data in self.receive(min(1.0, deadline - time.monotonic())):
                if field in data:
                    return data
        raise AssertionError(f"no {field} from the worker in {timeout}s:\n{self.output()}")

    def output(self):
        self.log.flush()
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        self.stop()
        self.closed.set()
        self.reader.join()
        self.sock.close()
        self.log.close()


@pytest.fixture
def start_worker(tmp_path):
    """Start workers on demand; every one is stopped at the end of the test."""
    workers = []

    def start(config, *args, ready=True, **kwargs):
        worker = WorkerProcess(config, tmp_path, *args, **kwargs)
        workers.append(worker)
        if ready:
            worker.wait_for("READY=1")
        return worker

    yield start
    for worker in workers:
        worker.close()


@pytest.fixture(scope="module")
def shared_worker(tmp_path_factory, rabbitmq, account):
    """One worker for the tests that only submit tasks: (config file, worker)."""
    tmp = tmp_path_factory.mktemp("shared-worker")
    config = write_config(tmp / "etc", rabbitmq, account)
    worker = WorkerProcess(config, tmp)
    try:
        worker.wait_for("READY=1")
        yield config, worker
    finally:
        worker.close()
