"""Integration: the result store's accounts in a real redis-server (Debian's), used by Celery.

Each redis-server here is private: its own port on loopback, a tmp dir, our rendered ACL file.
"""

import contextlib
import gc
import json
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from celeryd_pkg.admin import store
from tests.integration.broker import free_port
from tests.integration.conftest import PYTHON, REPO, clean_env

REDIS_SERVER = "/usr/bin/redis-server"
ADMIN_PASSWORD = secrets.token_urlsafe(24)
WORKER = ("worker-web1", secrets.token_urlsafe(24))
CLIENT = ("client-ops", secrets.token_urlsafe(24))


class RedisServer:
    """One redis-server process on host:port, started with argv (port, bind and dir in it)."""

    def __init__(self, base, argv, port, host="127.0.0.1"):
        self.base, self.argv, self.port, self.host, self.process = base, argv, port, host, None

    def start(self):
        log = open(self.base / "redis.log", "ab")
        # No NOTIFY_SOCKET of the caller's: the drop-in's argv says --supervised systemd.
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.base, env=clean_env())
        log.close()
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection((self.host, self.port), timeout=1).close()
                return self
            log = (self.base / "redis.log").read_text()
            assert time.monotonic() < deadline, f"redis-server did not start:\n{log}"
            time.sleep(0.1)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # redis-server's clean shutdown
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def connect(self, user, password, db=0):
        return redis.Redis(host=self.host, port=self.port, db=db, username=user,
                           password=password, socket_timeout=5)

    def admin(self):
        return self.connect(store.ADMIN, ADMIN_PASSWORD)


# The ACL file as celeryd-admin writes it for the redis-server installed here.
VERSION = store.parse_version(subprocess.run([REDIS_SERVER, "--version"], capture_output=True,
                                             text=True).stdout)


def write_aclfile(path):
    text = store.update_aclfile("", ADMIN_PASSWORD, *WORKER, "worker", VERSION)
    path.write_text(store.update_aclfile(text, ADMIN_PASSWORD, *CLIENT, "client", VERSION))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A private redis-server with the worker and client accounts, as the brief starts it."""
    base, port = tmp_path_factory.mktemp("redis"), free_port()
    write_aclfile(base / "users.acl")
    node = RedisServer(base, [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                              "--aclfile", str(base / "users.acl"), "--dir", str(base),
                              "--save", "", "--appendonly", "no"], port)
    node.aclfile = base / "users.acl"
    try:
        yield node.start()
    finally:
        node.stop()


def refused(call, error=redis.exceptions.NoPermissionError):
    """Whether Redis refused call: NOPERM (no permission) by default."""
    try:
        call()
    except error:
        return True
    return False


# WRONGPASS: redis-py 4.3 raises a plain ResponseError, later ones AuthenticationError.
LOGIN_REFUSED = (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)


def test_the_acl_file_has_hashes_only_and_redis_loaded_it_as_written(server):
    text = server.aclfile.read_text()
    for password in (ADMIN_PASSWORD, WORKER[1], CLIENT[1]):
        assert password not in text
    listed = server.admin().acl_list()
    assert [line.split()[1] for line in listed] == ["client-ops", "default", "worker-web1"]


@pytest.mark.parametrize("account", [WORKER, CLIENT], ids=["worker", "client"])
def test_no_account_touches_other_keys_or_administers_the_store(server, account):
    server.admin().set("other:key", "secret")
    conn = server.connect(*account)
    for call in (lambda: conn.get("other:key"), lambda: conn.set("other:key", "x"),
                 lambda: conn.delete("other:key"), conn.flushall, conn.flushdb,
                 lambda: conn.config_get("*"), conn.acl_list, lambda: conn.keys("*"),
                 lambda: conn.scan(0), conn.client_list,
                 lambda: conn.publish("other", "x")):
        assert refused(call), call
    assert server.admin().get("other:key") == b"secret"


def test_worker_writes_results_and_client_reads_and_waits_for_them_only(server):
    worker, client = server.connect(*WORKER), server.connect(*CLIENT)
    key = f"celery-task-meta-{secrets.token_hex(4)}"
    assert worker.setex(key, 60, "w") and worker.get(key) == b"w" and worker.delete(key) == 1
    assert worker.set("celery-taskset-meta-g.t", 1) and worker.incrby("celery-taskset-meta-g.t")
    assert worker.set(key, "stored") and worker.publish(key, "nobody listens") == 0
    assert client.get(key) == b"stored" and client.mget([key]) == [b"stored"]
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    assert worker.publish(key, "done") == 1
    assert pubsub.get_message(timeout=5)["data"] == b"done"
    pubsub.close()
    for call in (lambda: client.set(key, "x"), lambda: client.delete(key),
                 lambda: client.setex(key, 5, "x"), lambda: client.expire(key, 1),
                 lambda: client.publish(key, "forged")):
        assert refused(call), call
    assert worker.get(key) == b"stored"
    worker.delete(key)


def close(*apps):
    """Close apps while their store still runs: a pending AsyncResult kept alive by a cycle
    (an exception's traceback) would otherwise unsubscribe at exit, retrying for 20 s."""
    gc.collect()
    for app in apps:
        app.close()


def celery_app(port, account, db=0):
    """A Celery app with the contract's result settings, logged in as account."""
    user, password = account
    app = Celery("store-test", set_as_current=False)
    app.conf.update(broker_url="memory://", task_always_eager=False,
                    result_backend=f"redis://{user}:{password}@127.0.0.1:{port}/{db}",
                    result_expires=3600, result_backend_always_retry=True,
                    result_extended=False)
    return app


def test_celery_stores_with_the_worker_account_and_reads_with_the_client_account(server):
    worker_app, client_app = celery_app(server.port, WORKER), celery_app(server.port, CLIENT)
    done, failed, late = (secrets.token_hex(8) for _ in range(3))
    worker_app.backend.store_result(done, 8, "SUCCESS")
    worker_app.backend.mark_as_failure(failed, ValueError("boom"))
    assert AsyncResult(done, app=client_app).get(timeout=5) == 8
    result = AsyncResult(failed, app=client_app)
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=5)
    assert result.state == "FAILURE"
    # Waiting before the result exists: Celery subscribes, then the worker publishes.
    timer = threading.Timer(0.5, worker_app.backend.store_result, (late, [1, "x"], "SUCCESS"))
    timer.start()
    assert AsyncResult(late, app=client_app).get(timeout=5) == [1, "x"]
    timer.join()
    assert server.admin().ttl(f"celery-task-meta-{done}") > 3000
    close(worker_app, client_app)


def test_acl_load_picks_up_a_new_account_and_a_removal_without_a_restart(server):
    newcomer = ("worker-web2", secrets.token_urlsafe(24))
    pid = server.process.pid
    old = server.aclfile.read_text()
    try:
        assert refused(server.connect(*newcomer).ping, LOGIN_REFUSED)
        server.aclfile.write_text(store.update_aclfile(old, ADMIN_PASSWORD, *newcomer, "worker",
                                                       VERSION))
        assert server.admin().acl_load()
        key = f"celery-task-meta-{secrets.token_hex(4)}"
        assert server.connect(*newcomer).set(key, "x")
        assert refused(lambda: server.connect(*newcomer).get("other:key"))
        assert server.connect(*CLIENT).get(key) == b"x"
        server.aclfile.write_text(store.update_aclfile(old, ADMIN_PASSWORD, newcomer[0],
                                                       version=VERSION))
        assert server.admin().acl_load()
        assert refused(server.connect(*newcomer).ping, LOGIN_REFUSED)
    finally:
        server.aclfile.write_text(old)
        server.admin().acl_load()
    assert server.process.pid == pid and server.process.poll() is None


# A real Celery worker (Celery's own test worker: consumer, solo pool, memory broker) storing
# results with the worker account, a task and a chord, read with the client account. In its
# own process: the test worker makes its app the default one and sets up logging. The
# passwords come on stdin, never in argv.
REAL_WORKER = """
import json, sys
from celery import chord
from celery.contrib.testing.worker import start_worker
from tests.integration.test_store_acl import celery_app, close
given = json.load(sys.stdin)
app, client = (celery_app(given["port"], given[role]) for role in ("worker", "client"))
def add(x, y):
    return x + y
def total(numbers):
    return sum(numbers)
add, total = app.task(name="store.add")(add), app.task(name="store.total")(total)
with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
    single = client.send_task("store.add", (2, 3)).get(timeout=10)
    both = chord([add.s(i, i) for i in range(3)])(total.s())
    print(json.dumps([single, client.AsyncResult(both.id).get(timeout=10)]))
close(app, client)
"""


def test_a_real_celery_worker_needs_nothing_the_worker_account_lacks(server):
    admin = server.admin()
    admin.execute_command("ACL", "LOG", "RESET")
    given = {"port": server.port, "worker": WORKER, "client": CLIENT}
    done = subprocess.run([PYTHON, "-c", REAL_WORKER], input=json.dumps(given),
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=clean_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [5, 6]
    # Nothing refused on the way (not even a call Celery or redis-py would have shrugged off).
    assert admin.execute_command("ACL", "LOG") == []
    for password in (WORKER[1], CLIENT[1]):
        assert password not in done.stdout + done.stderr


def dropin_argv(base, port, bind="127.0.0.1", aclfile="users.acl"):
    """redis-server's argv as the drop-in starts it (Debian's redis.conf first), then what
    keeps this one private: its own port, address, ACL file, dir, log and pid file (a later
    option wins)."""
    line = [line for line in store.render_dropin().splitlines()
            if line.startswith("ExecStart=/")][0]
    return shlex.split(line.split("=", 1)[1]) + [
        "--port", str(port), "--bind", bind, "--aclfile", str(base / aclfile),
        "--dir", str(base), "--logfile", "", "--pidfile", str(base / "redis.pid"),
        "--save", ""]


def test_the_dropins_options_start_redis_and_results_in_db_3_survive_a_restart(tmp_path):
    write_aclfile(tmp_path / "users.acl")
    port = free_port()
    node = RedisServer(tmp_path, dropin_argv(tmp_path, port), port)
    task_id = secrets.token_hex(8)
    try:
        node.start()
        assert node.admin().config_get("appendonly") == {"appendonly": "yes"}
        assert node.admin().config_get("aclfile")["aclfile"].endswith("users.acl")
        app = celery_app(port, WORKER, db=3)  # results.db: redis-py sends SELECT 3
        app.backend.store_result(task_id, {"kept": True}, "SUCCESS")
        close(app)
        node.stop()  # no RDB (--save ""): only the append-only file can bring it back
        node.start()
        client_app = celery_app(port, CLIENT, db=3)
        assert AsyncResult(task_id, app=client_app).get(timeout=5) == {"kept": True}
        assert node.admin().exists(f"celery-task-meta-{task_id}") == 0  # not in db 0
        close(client_app)
    finally:
        node.stop()


def test_with_the_admins_password_protected_mode_lets_remote_logins_in(tmp_path):
    """The drop-in leaves protected-mode as Debian ships it (yes): it refuses remote clients
    only while the default user has no password, which our ACL file never allows. Remote:
    from this host's first non-loopback address (the connection never leaves the host)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    addresses = [a for a in out if "." in a and not a.startswith("127.")]
    assert addresses, "this test needs a non-loopback IPv4 address (hostname -I)"
    address, port = addresses[0], free_port()
    write_aclfile(tmp_path / "users.acl")
    (tmp_path / "nopass.acl").write_text("user default on nopass ~* &* +@all\n")
    for aclfile, admitted in (("nopass.acl", False), ("users.acl", True)):
        argv = dropin_argv(tmp_path, port, bind=address, aclfile=aclfile)
        node = RedisServer(tmp_path, argv, port, host=address)
        try:
            node.start()
            if admitted:
                assert node.admin().config_get("protected-mode") == {"protected-mode": "yes"}
                assert node.connect(*WORKER).set("celery-task-meta-remote", 1)
            else:
                # A raw socket: Redis answers at accept, before redis-py would ask.
                with socket.create_connection((address, port), timeout=5) as raw:
                    raw.sendall(b"PING\r\n")
                    assert raw.recv(4096).startswith(b"-DENIED Redis is running in protected")
        finally:
            node.stop()

