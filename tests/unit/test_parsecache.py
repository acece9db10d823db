"""The parse cache: hits by content, trusted only from root, never a password; the JSON
credentials file read without yaml; errors still name their line."""

import json
import os

import pytest

from celeryd_pkg import account, config, parsecache
from celeryd_pkg.errors import ConfigError

TEXT = "# a comment\nworker:\n  concurrency: 3\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache at a path of its own; each test starts as a new process would."""
    path = tmp_path / "cache" / "parsed-config.json"
    monkeypatch.setattr(parsecache, "PATH", str(path))
    monkeypatch.setattr(parsecache, "_entries", None)
    monkeypatch.setattr(parsecache, "_changed", False)
    return path


def new_process(monkeypatch):
    monkeypatch.setattr(parsecache, "_entries", None)
    monkeypatch.setattr(parsecache, "_changed", False)


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def test_a_parse_is_kept_by_content_and_found_by_the_next_process(cache, as_root, monkeypatch):
    if os.geteuid() != 0:
        pytest.fail("the cache is trusted only when root owns it: run the unit tests as root "
                    "(make test does)")
    assert parsecache.lookup(TEXT) == (False, None)
    parsecache.remember(TEXT, {"worker": {"concurrency": 3}})
    parsecache.save()
    assert oct(cache.stat().st_mode & 0o777) == "0o644"
    new_process(monkeypatch)
    assert parsecache.lookup(TEXT) == (True, {"worker": {"concurrency": 3}})
    assert parsecache.lookup(TEXT + "\n") == (False, None)  # an edited file misses


def test_a_cache_anyone_else_could_write_is_ignored(cache, monkeypatch):
    cache.parent.mkdir()
    cache.write_text(json.dumps({parsecache.digest(TEXT): {"broker": {"host": "evil"}}}))
    cache.chmod(0o666)
    assert parsecache.lookup(TEXT) == (False, None)
    new_process(monkeypatch)
    cache.chmod(0o644)
    os.chown(cache, 0, 0)
    assert parsecache.lookup(TEXT)[0] is (os.geteuid() == 0)


def test_data_with_a_password_or_not_json_is_never_kept(cache, as_root):
    parsecache.lookup("")
    parsecache.remember("a", {"broker": {"password": "s3cret"}})
    import datetime

    parsecache.remember("b", {"worker": {"when": datetime.date(2026, 1, 1)}})
    parsecache.save()
    assert not cache.exists()


def test_only_root_writes_and_only_the_newest_entries_stay(cache, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    parsecache.lookup("")
    parsecache.remember("x", {"worker": {}})
    parsecache.save()
    assert not cache.exists()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(parsecache, "LIMIT", 2)
    for text in ("y", "z"):
        parsecache.remember(text, {"worker": {}})
    parsecache.save()
    assert set(json.loads(cache.read_text())) == {parsecache.digest("y"), parsecache.digest("z")}


def test_the_credentials_file_celeryd_writes_is_read_without_yaml(tmp_path, cache):
    (tmp_path / "credentials").write_text(account.render(
        {"host": "h", "port": 5671, "user": "u", "password": "p: w'\"", "tls": True}))
    broker = config.read_credentials(str(tmp_path / "credentials"))
    assert broker == {"host": "h", "port": 5671, "user": "u", "password": "p: w'\"",
                      "tls": True}
    import yaml  # and it is still YAML, for anyone who edits it as YAML

    assert yaml.safe_load((tmp_path / "credentials").read_text())["broker"]["user"] == "u"


def test_errors_in_json_or_cached_data_still_name_their_line(tmp_path, cache, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.write_text(account.render({"user": "u"}).replace('"user"', '"colour"'))
    with pytest.raises(ConfigError, match=r"credentials: line 6: unknown key 'broker.colour'"):
        config.read_credentials(str(credentials))
    # A cached parse the schema no longer accepts (after an upgrade, say).
    main = tmp_path / "celeryd.yaml"
    main.write_text("worker:\n  concurrency: 2\n  colour: blue\n")
    parsecache.lookup("")
    parsecache._entries[parsecache.digest(main.read_text())] = {
        "worker": {"concurrency": 2, "colour": "blue"}}
    with pytest.raises(ConfigError, match=r"celeryd.yaml: line 3: unknown key 'worker.colour'"):
        config.load(str(main), env={})
