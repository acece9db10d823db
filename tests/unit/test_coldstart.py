"""celery-submit's cold path: the config located and read without pathlib or urllib, exactly
where pathlib would find it, and the task message built cheaply but unchanged."""

import json
import os
import socket
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from celeryd_pkg import account, config, protocol

REPO = Path(__file__).resolve().parents[2]


def test_loading_the_config_imports_neither_pathlib_nor_urllib_nor_yaml_once_cached(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "celeryd.yaml").write_text((REPO / "conf" / "celeryd.yaml").read_text())
    (tmp_path / "conf.d" / "myapp.yaml").write_text(
        (REPO / "examples" / "conf.d" / "myapp.yaml").read_text())
    # As celeryd-admin writes it.
    (tmp_path / "credentials").write_text(account.render(
        {"host": "10.0.0.5", "password": "p'w", "tls": False}))
    cache = tmp_path / "cache" / "parsed-config.json"
    code = ("import sys; from celeryd_pkg import config, parsecache; "
            f"parsecache.PATH = {str(cache)!r}; "
            f"c = config.load({str(tmp_path / 'celeryd.yaml')!r}, env={{}}); "
            "assert c.broker.password == \"p'w\" and c.broker.host == '10.0.0.5'; "
            "print(sorted(m for m in ('pathlib', 'urllib.parse', 'yaml') if m in sys.modules))")

    def imported():
        result = subprocess.run(["/usr/bin/python3", "-c", code], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # The first run parses the two YAML files (and, as root, writes the cache: files.py's
    # writer imports pathlib); the credentials file is JSON and needs no yaml at all.
    assert "'yaml'" in imported()
    if os.geteuid() == 0:
        assert imported() == "[]\n"
        assert "p'w" not in cache.read_text()  # the secret is not cached
    else:  # only root writes the cache
        assert not cache.exists() and imported() == "['yaml']\n"


@pytest.mark.parametrize("given", [
    "", "/", "//", "///x", ".", "..", "a", "a/", "a//b", "./a", "/a/./b/", "//a/b.yaml",
    "/x.yaml", "a/..", "x.yaml",
])
@pytest.mark.parametrize("how", ["argument", "CELERYD_CONFIG", "CELERYD_ROOT"])
def test_locations_are_spelt_as_pathlib_spells_them(given, how):
    config_file, env = (given or None, {}) if how == "argument" else (None, {how: given})
    explicit = config_file or env.get("CELERYD_CONFIG")
    main = (PurePosixPath(explicit) if explicit else
            PurePosixPath(env.get("CELERYD_ROOT", "/")) / "etc/celeryd/celeryd.yaml")
    expected = (str(main), str(main.parent / "conf.d"), str(main.parent / "credentials"),
                bool(explicit))
    assert config._locations(config_file, env) == expected
    assert config.config_paths(config_file, env) == (
        Path(expected[0]), Path(expected[1]), Path(expected[2]), expected[3])


def test_conf_d_files_are_the_ones_path_glob_finds(tmp_path):
    names = [".yaml", ".hidden.yaml", "@a.yaml", "b.yaml", "A.yaml", "a.YAML", "c.yml",
             "z.yaml.bak", "10-x.yaml"]
    for name in names:
        (tmp_path / name).write_text("")
    (tmp_path / "dir.yaml").mkdir()
    assert config._yaml_files(str(tmp_path)) == [p.name for p in sorted(tmp_path.glob("*.yaml"))]


def old_build_message(task, args, kwargs, task_id, reply_to=None):
    """build_message's body and origin as they were written before they were made cheap."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return (json.dumps([list(args), kwargs, embed]), f"{os.getpid()}@{socket.gethostname()}")


@pytest.mark.parametrize("args, kwargs", [
    ([], {}), ((4, 4), {}), (["é\u2028\"\\", None, True, 2.5, [1, {"a": []}]], {"k y": {"x": 1}}),
    (["x" * 3000], {"é": "y" * 3000}),
])
def test_the_cheap_message_is_the_message_it_was(args, kwargs):
    body, properties = protocol.build_message("celeryd.add", args, kwargs, "id-1", "r")
    assert (body, properties["application_headers"]["origin"]) == old_build_message(
        "celeryd.add", args, kwargs, "id-1", "r")


def test_a_forked_child_sends_its_own_pid_as_origin():
    protocol.build_message("celeryd.add", [], {}, "id-1")  # the parent's origin, cached
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        origin = protocol.build_message("celeryd.add", [], {}, "id-2")[1][
            "application_headers"]["origin"]
        os.write(write, origin.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1000).decode() == f"{pid}@{socket.gethostname()}"
