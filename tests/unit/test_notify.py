"""The sd_notify wrapper: exact datagrams to NOTIFY_SOCKET, silence without it, never a raise."""

import logging
import os
import socket
import time
import uuid

import pytest

from celeryd_pkg.notify import Notifier

STOPPING = b"STOPPING=1\nSTATUS=Stopping: finishing tasks in flight"


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's, named by NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 108 bytes"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield receiver
    receiver.close()


def received(receiver):
    """Return every datagram waiting on receiver."""
    datagrams = []
    while True:
        try:
            datagrams.append(receiver.recv(4096))
        except BlockingIOError:
            return datagrams


def test_without_notify_socket_every_call_is_a_silent_no_op(monkeypatch, caplog, capsys):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    caplog.set_level(logging.DEBUG)
    notifier = Notifier()
    assert notifier.enabled is False
    results = [notifier.ready("Consuming"), notifier.status("x"), notifier.reloading(),
               notifier.watchdog(), notifier.stopping()]
    assert results == [None] * 5
    # Nothing attempted: not even a failed attempt logged at debug.
    assert caplog.records == []
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("method, args, datagram", [
    ("ready", ["Consuming from celery"], b"READY=1\nSTATUS=Consuming from celery"),
    ("status", ["Reconnecting to the broker"], b"STATUS=Reconnecting to the broker"),
    ("watchdog", [], b"WATCHDOG=1"),
    ("stopping", [], STOPPING),
])
def test_each_call_sends_exactly_one_datagram_with_its_fields(systemd, method, args, datagram):
    notifier = Notifier()
    assert notifier.enabled is True
    getattr(notifier, method)(*args)
    assert received(systemd) == [datagram]


def test_reloading_sends_the_monotonic_time_of_the_reload(systemd):
    before = int(time.monotonic() * 1e6)
    Notifier().reloading()
    after = int(time.monotonic() * 1e6)
    [datagram] = received(systemd)
    reloading, monotonic, status = datagram.decode().split("\n")
    assert (reloading, status) == ("RELOADING=1", "STATUS=Reloading")
    name, _, usec = monotonic.partition("=")
    assert name == "MONOTONIC_USEC" and before <= int(usec) <= after


def test_one_notifier_sends_every_call_in_order(systemd):
    notifier = Notifier()
    notifier.ready("Consuming from celery")
    notifier.watchdog()
    notifier.stopping()
    assert received(systemd) == [b"READY=1\nSTATUS=Consuming from celery", b"WATCHDOG=1",
                                 STOPPING]


def test_a_notify_socket_in_the_abstract_namespace_is_reached(monkeypatch):
    name = f"celeryd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().status("abstract")
        assert received(receiver) == [b"STATUS=abstract"]


def test_a_forked_child_sends_nothing_only_the_main_process_speaks(systemd):
    notifier = Notifier()
    pid = os.fork()
    if pid == 0:  # the child: a prefork pool process inheriting the notifier
        try:
            notifier.status("from the child")
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    notifier.status("from the main process")
    assert received(systemd) == [b"STATUS=from the main process"]


@pytest.mark.parametrize("target", ["missing", "stale", "directory", "file"])
def test_an_unusable_notify_socket_never_raises_and_logs_only_at_debug(
        tmp_path, monkeypatch, caplog, target):
    path = tmp_path / target
    if target == "stale":  # a socket file whose receiver is gone
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
            gone.bind(str(path))
    elif target == "directory":
        path.mkdir()
    elif target == "file":
        path.write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    caplog.set_level(logging.DEBUG)
    notifier = Notifier()
    assert notifier.enabled is True
    for call in (lambda: notifier.ready("Consuming"), notifier.watchdog, notifier.stopping):
        assert call() is None
    assert [record.getMessage() for record in caplog.records] == ["sd_notify failed"] * 3
    assert {record.levelno for record in caplog.records} == {logging.DEBUG}


@pytest.mark.parametrize("env, seconds", [
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 0),
    ({"WATCHDOG_USEC": "soon"}, 0),
    ({}, 0),
])
def test_the_watchdog_interval_is_watchdog_usec_when_meant_for_this_process(env, seconds):
    assert Notifier(env=env).watchdog_seconds == seconds


def test_status_text_beyond_latin_1_arrives_as_utf_8(systemd):
    Notifier().status("Consuming from 队列 and café")
    assert received(systemd) == ["STATUS=Consuming from 队列 and café".encode("utf-8")]


def test_a_reader_that_stopped_reading_never_stalls_the_worker(systemd):
    """Found with a worker whose notify socket nobody read: its event loop froze in sendall
    once the socket's queue was full. Now each send waits at most SEND_TIMEOUT, then drops."""
    import threading

    from celeryd_pkg.notify import SEND_TIMEOUT

    with open("/proc/sys/net/unix/max_dgram_qlen") as limit:
        count = int(limit.read()) + 20  # 20 more than the kernel queues unread
    notifier = Notifier()
    sender = threading.Thread(target=lambda: [notifier.status(f"busy {n}") for n in range(count)],
                              daemon=True)
    started = time.monotonic()
    sender.start()
    sender.join(timeout=20 * SEND_TIMEOUT + 10)
    assert not sender.is_alive(), "a send blocked on the full socket"
    assert time.monotonic() - started >= 20 * SEND_TIMEOUT * 0.9  # it did wait, then drop
    waiting = received(systemd)
    assert waiting[0] == b"STATUS=busy 0" and len(waiting) < count
    notifier.status("after")  # room again once systemd reads
    assert received(systemd) == [b"STATUS=after"]
