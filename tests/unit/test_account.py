"""Unit tests: the broker account (URLs, join strings, masking) and the credentials file."""

import os
import stat
from pathlib import Path

import pytest

from celeryd_pkg import account
from celeryd_pkg import config as config_module
from celeryd_pkg.admin import tls
from celeryd_pkg.errors import ConfigError, UsageError
from tests.unit.fake_rabbitmqctl import other_group


@pytest.fixture
def creds_path(tmp_path):
    return tmp_path / "etc" / "credentials"


@pytest.mark.parametrize("url, expected", [
    ("amqp://celery:pw@broker.example.org/celery",
     ("broker.example.org", 5672, "celery", "celery", "pw")),
    ("amqp://celery:pw@Broker.Example.ORG:5673/celery",
     ("broker.example.org", 5673, "celery", "celery", "pw")),
    ("AMQP://u%40x:p%2Fw%3A%40%25@10.0.0.5:1/v%20h", ("10.0.0.5", 1, "v h", "u@x", "p/w:@%")),
    ("amqp://u:pw@[2001:db8::1]:5672/%2F", ("2001:db8::1", 5672, "/", "u", "pw")),
    ("amqp://u:pw@[::1]/celery", ("::1", 5672, "celery", "u", "pw")),
    ("  amqp://u:pw@h/v\n", ("h", 5672, "v", "u", "pw")),
])
def test_parse_url_accepts_join_strings(url, expected):
    broker = account.from_url(url)
    assert tuple(broker[k] for k in ("host", "port", "vhost", "user", "password")) == expected


@pytest.mark.parametrize("url, part", [
    ("", "no URL"),
    ("http://u:SECRET@h/v", "scheme"),
    ("u:SECRET@h/v", "scheme"),
    ("amqp://u:SECRET", "user"),
    ("amqp://:SECRET@h/v", "user"),
    ("amqp://u@h/v", "password"),
    ("amqp://u:@h/v", "password"),
    ("amqp://u:SECRET@/v", "host"),
    ("amqp://u:SECRET@h:0/v", "port"),
    ("amqp://u:SECRET@h:65536/v", "port"),
    ("amqp://u:SECRET@h:port/v", "port"),
    ("amqp://u:SECRET@[::1/v", "host"),
    ("amqp://u:SECRET@h", "vhost"),
    ("amqp://u:SECRET@h/", "vhost"),
    ("amqp://u:SECRET@h/a/b", "vhost"),
    ("amqp://u:SECRET@h/v?heartbeat=5", "parameter"),
    ("amqp://u:SECRET@h/v#x", "fragment"),
    ("amqp://u:SECRET@h/v?ca=MIIB", "amqps"),
    ("amqps://u:SECRET@h/v?ca=bm90IGEgY2VydGlmaWNhdGU", "ca"),
    ("amqps://u:SECRET@h/v?ca=%%%", "ca"),
    ("amqp://u:SEC RET@h/v", "whitespace"),
    ("amqp://u:SECRET@h!/v", "host"),
    ("amqp://u:SEC%0aRET@h/v", "password"),
])
def test_parse_url_rejects_bad_join_strings_naming_the_part_and_masking_the_password(url, part):
    with pytest.raises(UsageError) as error:
        account.from_url(url)
    message = error.value.message
    assert error.value.exit_code == 2
    assert part in message and message.count("\n") == 0
    assert "SECRET" not in message and "SEC RET" not in message


def test_amqps_join_string_means_tls_on_port_5671_by_default():
    broker = account.from_url("amqps://u:pw@broker.example.org/celery")
    assert (broker["tls"], broker["port"], "ca" in broker) == (True, 5671, False)
    assert account.from_url("amqp://u:pw@h/v")["tls"] is False


def test_join_string_round_trips_with_the_ca_certificate(tmp_path):
    ca = tls.ca_files(tmp_path / "etc")
    tls.setup(ca, tmp_path / "rabbitmq", ["broker.example.org"], group="root")
    broker = {"host": "broker.example.org", "port": 5671, "vhost": "v h", "user": "worker-a",
              "password": "p/w:@%?&=", "tls": True}
    text = account.to_url(broker, masked=False, ca_file=ca.cert)
    assert text.startswith("amqps://worker-a:p%2Fw%3A%40%25%3F%26%3D@broker.example.org:5671/"
                           "v%20h?ca=")
    assert not any(c.isspace() for c in text)
    parsed = account.from_url(text)
    assert parsed.pop("ca") == ca.cert.read_text()
    assert parsed == broker


@pytest.mark.parametrize("text, shown", [
    ("amqp://user:SECRET@host/vhost", "amqp://user:***@host/vhost"),
    ("amqp://user:SE@CR@ET@host:1/v", "amqp://user:***@host:1/v"),
    ("amqp://user:SECRET", "amqp://***"),
    ("amqp://host/vhost", "amqp://host/vhost"),
    ("user:SECRET@host", "user:***@host"),
    ("SECRET", "***"),
])
def test_mask_url_hides_everything_that_may_be_the_password(text, shown):
    assert account.mask_url(text) == shown


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o777])
def test_write_gives_the_file_mode_0640_and_owner_root_group_whatever_the_umask(
        creds_path, umask):
    gid = other_group()
    old = os.umask(umask)
    try:
        account.save(creds_path, {"user": "celery", "password": "s3cret"}, gid)
    finally:
        os.umask(old)
    info = creds_path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (0, gid)


def test_write_sets_owner_and_mode_on_the_temp_file_before_the_first_byte(
        creds_path, monkeypatch):
    gid = other_group()
    seen = []
    real_write = os.write

    def spy(fd, data):
        info = os.fstat(fd)
        seen.append((stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_size))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    account.save(creds_path, {"password": "s3cret"}, gid)
    monkeypatch.undo()
    assert seen and seen[0] == (0o640, 0, gid, 0)


def test_write_creates_the_temp_file_exclusively_in_the_same_directory(creds_path, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        opened.append((Path(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    account.save(creds_path, {"password": "s3cret"}, 0)
    monkeypatch.undo()
    tmp, flags = opened[0]
    assert tmp.parent == creds_path.parent and tmp != creds_path
    assert flags & os.O_EXCL and flags & os.O_CREAT and flags & os.O_NOFOLLOW


@pytest.mark.parametrize("failing", ["write", "fsync", "fchown"])
def test_a_failure_mid_write_leaves_the_old_file_intact_and_no_temp_file(
        creds_path, monkeypatch, failing):
    account.save(creds_path, {"password": "old"}, 0)
    before = creds_path.read_bytes()

    def broken(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(ConfigError) as error:
        account.save(creds_path, {"password": "new"}, 0)
    monkeypatch.undo()
    assert error.value.exit_code == 3
    assert "new" not in error.value.message
    assert creds_path.read_bytes() == before
    assert sorted(p.name for p in creds_path.parent.iterdir()) == ["credentials"]


def test_a_failure_inside_the_staged_block_leaves_the_old_file_intact_and_no_temp_file(
        creds_path):
    account.save(creds_path, {"password": "old"}, 0)
    before = creds_path.read_bytes()
    with pytest.raises(RuntimeError):
        with account.staged(creds_path, {"password": "new"}, 0) as tmp:
            assert tmp.exists() and "new" in tmp.read_text()
            raise RuntimeError("broker said no")
    assert creds_path.read_bytes() == before
    assert sorted(p.name for p in creds_path.parent.iterdir()) == ["credentials"]


def test_write_replaces_the_file_by_rename(creds_path):
    account.save(creds_path, {"password": "old"}, 0)
    inode = creds_path.stat().st_ino
    account.save(creds_path, {"password": "new"}, 0)
    assert creds_path.stat().st_ino != inode
    assert account.load(creds_path)["password"] == "new"


def test_the_written_file_is_what_the_config_loader_accepts(tmp_path):
    main = tmp_path / "celeryd.yaml"
    main.write_text("broker:\n  host: 127.0.0.1\n")
    secret = "p:w@/ #'\"x"
    account.save(tmp_path / "credentials", {"host": "broker.example", "port": 5673,
                                            "vhost": "/", "user": "u", "password": secret}, 0)
    settings = config_module.load(main, env={})
    b = settings.broker
    assert (b.host, b.port, b.vhost, b.user, b.password) == ("broker.example", 5673, "/", "u",
                                                             secret)


def test_read_returns_nothing_for_a_missing_file(creds_path):
    assert account.load(creds_path) == {}


def test_read_reports_a_malformed_file_without_quoting_it(creds_path):
    creds_path.parent.mkdir()
    creds_path.write_text("broker:\n  password: 'unterminated-secret\n")
    with pytest.raises(ConfigError) as error:
        account.load(creds_path)
    assert "unterminated-secret" not in error.value.message
    assert str(creds_path) in error.value.message


def test_resolve_group_names_the_missing_group_and_the_fix():
    with pytest.raises(ConfigError) as error:
        account.resolve_group("celeryd-no-such-group")
    assert error.value.exit_code == 3
    assert error.value.message == (
        "celeryd-admin: group 'celeryd-no-such-group' does not exist: install the celeryd "
        "package or pass --group")


def test_remove_is_idempotent(creds_path):
    account.save(creds_path, {"password": "x"}, 0)
    assert account.remove(creds_path) is True
    assert account.remove(creds_path) is False


def test_locked_lets_one_provision_at_a_time(creds_path):
    import threading
    import time

    order = []

    def second():
        with account.locked(creds_path):
            order.append("second")

    with account.locked(creds_path):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]


@pytest.mark.parametrize("results, url", [
    ({"host": "h", "port": 6379, "db": 0, "tls": False, "user": None, "password": None},
     "redis://h:6379/0"),
    ({"host": "h", "port": None, "db": 1, "tls": True, "user": "w", "password": "p:w"},
     "rediss://w:p%3Aw@h:6380/1"),
    ({"host": "h", "port": 7, "db": 0, "tls": False, "user": None, "password": "pw"},
     "redis://:pw@h:7/0"),
])
def test_results_url_carries_the_login_only_when_unmasked(results, url):
    assert account.to_results_url(results, masked=False) == url
    masked = account.to_results_url(results)
    assert (results["password"] or "@@") not in masked
    assert masked == url.replace("p%3Aw", "***").replace(":pw@", ":***@")


def test_credentials_file_keeps_the_result_stores_login(creds_path):
    creds_path.parent.mkdir(parents=True)
    broker = {"host": "h", "port": 5672, "vhost": "v", "user": "u", "password": "bp",
              "tls": False}
    account.save(creds_path, broker, os.getgid(), results={"user": "ru", "password": "rp"})
    assert account.load(creds_path)["password"] == "bp"
    assert account.load_results(creds_path) == {"user": "ru", "password": "rp"}
    account.save(creds_path, broker, os.getgid())
    assert account.load_results(creds_path) == {}
    assert "results" not in creds_path.read_text()


def test_a_join_string_carries_the_store_password_only_unmasked_and_reads_back():
    broker = {"host": "b.example", "vhost": "celery", "user": "worker-b", "password": "pw",
              "tls": False}
    url = account.to_url(broker, masked=False, results_password="s3cret/&=?")
    assert url == "amqp://worker-b:pw@b.example:5672/celery?results=s3cret%2F%26%3D%3F"
    assert account.from_url(url)["results_password"] == "s3cret/&=?"
    assert "s3cret" not in account.to_url(broker, results_password="s3cret/&=?")
    assert "results_password" not in account.from_url(url.split("?")[0])


def test_a_join_string_with_an_empty_store_password_is_refused_without_showing_secrets():
    with pytest.raises(UsageError) as refused:
        account.from_url("amqp://u:hidden@h/v?results=")
    assert "results: an empty or invalid result store password" in str(refused.value)
    assert "hidden" not in str(refused.value)
