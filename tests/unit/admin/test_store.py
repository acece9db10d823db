"""Unit tests: the result store's ACL rules, ACL file and redis-server drop-in, as text."""

import grp
import hashlib
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from celeryd_pkg.admin import store
from celeryd_pkg.errors import ConfigError, UsageError

PASSWORD, ADMIN_PASSWORD = "w0rker-Pa55-x", "adm1n-Pa55-y"
DEBIAN_UNIT = Path("/lib/systemd/system/redis-server.service")


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def commands(tokens):
    return {t[1:] for t in tokens if t.startswith("+")}


def test_worker_rules_store_and_publish_results_in_celerys_keys_only():
    tokens = store.rules("worker")
    assert tokens[:2] == ("resetkeys", "resetchannels")
    assert {t for t in tokens if t[0] in "~%&"} == {
        "~celery-task-meta-*", "~celery-taskset-meta-*", "~chord-unlock-*",
        "&celery-task-meta-*", "&celery-taskset-meta-*"}
    # Everything removed first, then the commands Celery sends added back, none of the
    # admin's: no FLUSHALL, CONFIG, ACL, KEYS, SCAN, a whole CLIENT or anything by category.
    assert tokens.index("-@all") < min(i for i, t in enumerate(tokens) if t.startswith("+"))
    assert {"get", "setex", "set", "publish", "del", "multi", "exec", "subscribe"} <= \
        commands(tokens)
    assert not commands(tokens) & {"flushall", "flushdb", "config", "acl", "keys", "scan",
                                   "client", "@all", "eval", "debug", "shutdown"}
    assert not [t for t in tokens if t.startswith("+@")]


def test_client_rules_read_results_and_wait_for_them_only():
    tokens = store.rules("client")
    assert {t for t in tokens if t[0] in "~%&"} == {"%R~celery-task-meta-*",
                                                    "&celery-task-meta-*"}
    assert commands(tokens) == {"get", "mget", "subscribe", "unsubscribe", "ping", "select",
                                "client|setname"}
    # A worker host submits too (one account per host): a worker may do all a client may.
    assert commands(tokens) < commands(store.rules("worker"))


def test_every_command_has_a_reason_and_appears_once():
    for _, named in store.ROLES.values():
        names = [name for name, _ in named]
        assert len(names) == len(set(names))
        assert all(why.strip() for _, why in named)


def test_client_setinfo_only_for_redis_servers_that_know_it():
    assert "+client|setinfo" not in store.rules("worker", (7, 0))
    assert "+client|setinfo" not in store.rules("client")
    assert store.rules("client", (8, 0))[-1] == "+client|setinfo"
    assert "+client|setinfo" in store.rules("worker", (7, 2))


def test_unknown_role_is_a_usage_error():
    with pytest.raises(UsageError, match="'broker'"):
        store.rules("broker")


def test_acl_line_holds_the_sha256_of_the_password_and_never_the_password():
    line = store.acl_line("worker-web1", PASSWORD, "worker")
    assert line.startswith(f"user worker-web1 on #{sha(PASSWORD)} resetkeys ")
    assert line.endswith(" ".join(store.rules("worker")))
    assert PASSWORD not in line
    assert not [t for t in line.split() if t[0] in "<>"]


@pytest.mark.parametrize("user", ["", "-x", "a b", "default", "nl\n"])
def test_bad_user_names_are_refused(user):
    with pytest.raises(UsageError):
        store.acl_line(user, PASSWORD, "worker")


def test_empty_password_is_refused():
    with pytest.raises(UsageError):
        store.acl_line("w", "", "worker")


def accounts():
    return {"worker-b": (sha("pb"), "worker"), "client-a": (sha("pa"), "client")}


def test_aclfile_starts_with_the_admin_then_one_line_per_account_sorted():
    text = store.render_aclfile(accounts(), ADMIN_PASSWORD)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0] == f"user default on #{sha(ADMIN_PASSWORD)} ~* &* +@all"
    assert lines[1] == f"user client-a on #{sha('pa')} " + " ".join(store.rules("client"))
    assert lines[2] == f"user worker-b on #{sha('pb')} " + " ".join(store.rules("worker"))
    assert len(lines) == 3
    assert ADMIN_PASSWORD not in text


def test_aclfile_refuses_something_that_is_not_a_hash():
    with pytest.raises(ConfigError, match="not a SHA-256"):
        store.render_aclfile({"w": ("plain-password", "worker")}, ADMIN_PASSWORD)


def test_parse_reads_back_what_render_wrote_for_either_redis_version():
    for version in ((7, 0), (8, 0)):
        text = store.render_aclfile(accounts(), ADMIN_PASSWORD, version)
        assert store.parse_aclfile(text) == (accounts(), sha(ADMIN_PASSWORD), [])


def test_adding_rotating_and_removing_one_account_keeps_every_other_line():
    foreign = f"user monitor on #{sha('m')} ~* +info"
    text = store.render_aclfile(accounts(), ADMIN_PASSWORD, others=[foreign])
    added = store.update_aclfile(text, ADMIN_PASSWORD, "worker-c", "pc", "worker")
    assert added.splitlines() == text.splitlines()[:3] + [
        store.acl_line("worker-c", "pc", "worker"), foreign]
    rotated = store.update_aclfile(added, ADMIN_PASSWORD, "client-a", "new", "client")
    assert store.parse_aclfile(rotated)[0] == {**accounts(), "client-a": (sha("new"), "client"),
                                               "worker-c": (sha("pc"), "worker")}
    assert foreign in rotated.splitlines()
    removed = store.update_aclfile(rotated, ADMIN_PASSWORD, "worker-b")
    assert "worker-b" not in removed
    assert store.parse_aclfile(removed) == (
        {"client-a": (sha("new"), "client"), "worker-c": (sha("pc"), "worker")},
        sha(ADMIN_PASSWORD), [foreign])
    assert "pc" not in [t.lstrip("#") for t in removed.split()]


def test_update_starts_a_new_file_and_a_new_admin_password_rehashes_the_admin():
    text = store.update_aclfile("", ADMIN_PASSWORD, "w", PASSWORD)
    again = store.update_aclfile(text, "other-admin", "w", PASSWORD)
    assert again.splitlines()[0] == f"user default on #{sha('other-admin')} ~* &* +@all"
    assert again.splitlines()[1] == text.splitlines()[1]


def test_update_replaces_a_hand_made_line_of_the_same_user():
    text = store.render_aclfile({}, ADMIN_PASSWORD, others=[f"user w on #{sha('x')} +get"])
    updated = store.update_aclfile(text, ADMIN_PASSWORD, "w", PASSWORD, "client")
    assert [line.split()[1] for line in updated.splitlines()] == ["default", "w"]


def test_update_with_an_unknown_role_changes_nothing():
    with pytest.raises(UsageError):
        store.update_aclfile("", ADMIN_PASSWORD, "w", PASSWORD, "admin")


def test_the_admins_line_is_always_written_anew():
    text = "user default on nopass ~* +@all\n" + store.acl_line("w", PASSWORD, "client")
    assert store.parse_aclfile(text) == ({"w": (sha(PASSWORD), "client")}, None, [])
    updated = store.update_aclfile(text, ADMIN_PASSWORD, "x", "px")
    assert [line.split()[:4] for line in updated.splitlines()] == [
        ["user", "default", "on", f"#{sha(ADMIN_PASSWORD)}"],
        ["user", "w", "on", f"#{sha(PASSWORD)}"], ["user", "x", "on", f"#{sha('px')}"]]


def test_a_line_with_another_hash_order_or_two_hashes_is_not_ours():
    rules = " ".join(store.rules("worker"))
    for line in (f"user w #{sha('a')} on {rules}", f"user w on #{sha('a')} #{sha('b')} {rules}"):
        assert store.parse_aclfile(line) == ({}, None, [line])


@pytest.mark.parametrize("line", ["user w on >clear-text ~* +@all", "requirepass x", "user",
                                  f"user w on #{sha('a')} <old"])
def test_parse_refuses_clear_text_passwords_and_other_lines_naming_the_file(line):
    with pytest.raises(ConfigError, match=r"/x/users.acl line 2"):
        store.parse_aclfile(f"\n{line}\n", "/x/users.acl")


def test_dropin_keeps_debians_execstart_and_adds_our_options():
    text = store.render_dropin()
    lines = text.splitlines()
    assert "[Service]" in lines
    start = lines.index("ExecStart=")
    assert lines[start - 1] == "[Service]"
    argv = shlex.split(lines[start + 1].split("=", 1)[1])
    assert argv[:5] == ["/usr/bin/redis-server", "/etc/redis/redis.conf", "--supervised",
                        "systemd", "--daemonize"]
    options = " ".join(argv[2:])
    assert "--aclfile /etc/celeryd/redis/users.acl" in options
    assert "--bind * -::*" in options
    assert "--appendonly yes" in options
    assert "tls" not in options and "--port" not in options
    # Never a change to redis.conf, never protected mode off: the admin has a password.
    assert "protected-mode" not in text and "requirepass" not in text


def test_dropin_execstart_is_debians_as_installed_here():
    unit = DEBIAN_UNIT.read_text().splitlines()
    assert f"ExecStart={store.DEBIAN_EXECSTART}" in unit
    # redis (group) must read the ACL file: /etc stays readable under ProtectSystem=strict
    # (not inaccessible), and the service runs as group redis.
    assert "ProtectSystem=strict" in unit and "Group=redis" in unit
    assert not [line for line in unit if line.startswith("InaccessiblePaths")]


def test_systemd_reads_the_dropin_over_debians_unit_without_a_complaint(tmp_path):
    """systemd-analyze verify names a drop-in line it cannot parse (and still exits 0)."""
    (tmp_path / "redis-server.service").write_text(DEBIAN_UNIT.read_text())
    for name, text in (("celeryd.conf", store.render_dropin()),
                       ("zz-check.conf", "[Service]\nExecStart=\nExecStart=not/absolute\n")):
        store.write_dropin(text, tmp_path / "redis-server.service.d" / name)
    done = subprocess.run(["systemd-analyze", "verify", "redis-server.service"], cwd=tmp_path,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},
                          capture_output=True, text=True, timeout=60)
    assert "zz-check.conf:3" in done.stderr  # drop-ins are read: ours would show up too
    assert "celeryd.conf" not in done.stdout + done.stderr


def test_dropin_with_tls_listens_on_6380_and_keeps_6379_for_this_hosts_worker():
    tls = store.TlsFiles("/etc/celeryd/redis/server.pem", "/etc/celeryd/redis/server.key",
                         "/etc/celeryd/tls/ca.pem")
    line = store.render_dropin(tls).splitlines()[-1]
    assert line.startswith(f"ExecStart={store.DEBIAN_EXECSTART} ")
    assert line.endswith("--aclfile /etc/celeryd/redis/users.acl --bind * -::* --appendonly yes "
                         "--port 6379 --tls-port 6380 "
                         "--tls-cert-file /etc/celeryd/redis/server.pem "
                         "--tls-key-file /etc/celeryd/redis/server.key "
                         "--tls-ca-cert-file /etc/celeryd/tls/ca.pem --tls-auth-clients no")


@pytest.mark.parametrize("text, version", [
    ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64", (7, 0)),
    ("Redis server v=8.0.2 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64", (8, 0)),
    ("Redis server", None), ("", None)])
def test_parse_version(text, version):
    assert store.parse_version(text) == version


def test_files_are_written_with_their_owners_and_modes(tmp_path):
    group = "daemon"  # not root's: a file that ignored the group would show it
    acl, admin, dropin = tmp_path / "r" / "users.acl", tmp_path / "r" / "admin", tmp_path / "d"
    text = store.update_aclfile("", ADMIN_PASSWORD, "w", PASSWORD)
    store.write_aclfile(text, acl, group)
    store.write_admin_password(ADMIN_PASSWORD, admin)
    store.write_dropin(store.render_dropin(), dropin)
    assert acl.read_text() == text
    assert (stat.S_IMODE(acl.stat().st_mode), acl.stat().st_uid, acl.stat().st_gid) == (
        0o640, 0, grp.getgrnam(group).gr_gid)
    assert (stat.S_IMODE(admin.stat().st_mode), admin.stat().st_gid) == (0o600, 0)
    assert store.read_admin_password(admin) == ADMIN_PASSWORD
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o644
    assert store.read_admin_password(tmp_path / "none") is None


def test_the_default_modes_are_the_contracts():
    assert (store.ACLFILE_MODE, store.ADMIN_PASSWORD_MODE) == (0o640, 0o600)
    assert str(store.ACLFILE) == "/etc/celeryd/redis/users.acl"
    assert str(store.DROPIN) == "/etc/systemd/system/redis-server.service.d/celeryd.conf"


def test_a_missing_group_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no group"):
        store.write_aclfile("x\n", tmp_path / "a", "no-such-group-here")
    assert not (tmp_path / "a").exists()
