"""Unit tests: the one atomic writer (its guarantees for secrets are in test_account.py)."""

import os
import stat

import pytest

from celeryd_pkg import files
from celeryd_pkg.errors import ConfigError
from tests.unit.fake_rabbitmqctl import other_group


def test_replace_writes_text_or_bytes_with_the_mode_and_group_asked(tmp_path):
    gid = other_group()
    files.replace(tmp_path / "a" / "key", b"\x00secret", mode=0o640, gid=gid)
    files.replace(tmp_path / "a" / "conf", "text\n")
    key, conf = os.stat(tmp_path / "a" / "key"), os.stat(tmp_path / "a" / "conf")
    assert (stat.S_IMODE(key.st_mode), key.st_uid, key.st_gid) == (0o640, 0, gid)
    assert stat.S_IMODE(conf.st_mode) == 0o644
    assert (tmp_path / "a" / "key").read_bytes() == b"\x00secret"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["conf", "key"]


def test_replace_never_follows_a_symlink_at_the_target_and_replaces_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "target").symlink_to(victim)
    files.replace(tmp_path / "target", "new")
    assert victim.read_text() == "keep"
    assert not (tmp_path / "target").is_symlink()
    assert (tmp_path / "target").read_text() == "new"


def test_a_failed_rename_keeps_the_new_content_and_names_where_it_is(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "occupied").write_text("x")  # a non-empty directory: rename fails
    with pytest.raises(ConfigError) as error:
        files.replace(tmp_path / "target", "new", prog="test")
    assert error.value.message.startswith(f"test: cannot replace {tmp_path / 'target'} (")
    kept = error.value.message.rsplit(" ", 1)[-1]
    assert open(kept).read() == "new"


def test_remove_is_idempotent_and_names_a_path_it_cannot_remove(tmp_path):
    (tmp_path / "f").write_text("x")
    assert files.remove(tmp_path / "f") is True
    assert files.remove(tmp_path / "f") is False
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError) as error:
        files.remove(tmp_path / "d")
    assert str(tmp_path / "d") in error.value.message and error.value.exit_code == 3
