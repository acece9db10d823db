"""Bad input, fuzzed (issue 7, promise 3): celery-submit's arguments, the YAML config and the
join URL that becomes the credentials file.

Every run must end with an exit code from the documented table (README: 0-6), one line per
problem and no traceback; a malformed input never leaves a half-written credentials file.
Hypothesis runs derandomized (the same examples every run) and bounded: at most a few hundred
examples per test, no deadline (the machines are noisy), all in-process except a handful of
subprocess runs that prove stderr carries no traceback.
"""

import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celeryd_pkg import admin, config, submit
from celeryd_pkg.errors import CelerydError

REPO = Path(__file__).resolve().parents[2]
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6}
PASSWORD = "Fuzz-s3cret-Pa55word"
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def etc(tmp_path_factory):
    """Configs for the fuzzed client: a valid one whose broker port is closed (so a valid
    command fails fast with exit 4), a broken one, a directory and a missing path."""
    directory = tmp_path_factory.mktemp("fuzz-etc")
    good = directory / "celeryd.yaml"
    good.write_text(f"broker:\n  host: 127.0.0.1\n  port: {closed_port()}\n"
                    f"  connect_timeout: 1\n  password: {PASSWORD}\nclient:\n  timeout: 1\n")
    broken = directory / "broken.yaml"
    broken.write_text("worker:\n  concurrency: many\n")
    return {"good": str(good), "broken": str(broken), "dir": str(directory),
            "missing": str(directory / "absent.yaml")}


def run_main(func, argv, env=None):
    """Call func(argv) with stdout/stderr captured (and os.environ patched); return
    (exit code, stdout, stderr). SystemExit (argparse --help) counts as an exit code."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = func(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()


def nested(depth, open_="[", close="]"):
    return open_ * depth + close * depth


# --- celery-submit's arguments ------------------------------------------------------------

OPTIONS = ["--kwarg", "--queue", "--countdown", "--timeout", "--no-wait", "--json", "--help",
           "--bogus", "-", "--", "--kwarg=a=1", "--countdown=-1", "--timeout=nan"]
WORDS = ["add", "mul", "xsum", "echo", "sleep", "myapp.tasks.resize", ".add", "add.", "a b",
         "", "4", "-1", "1e999", "nan", "inf", '"x"', "[1,2]", '{"a": 1}', "null", "true",
         "k=v", "1x=2", "=", "celery", "no-such-queue", "\x00", "é", "\udcff"]
ARG = st.one_of(
    st.sampled_from(OPTIONS), st.sampled_from(WORDS),
    st.text(max_size=30),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str),
    st.integers(min_value=1, max_value=5000).map(nested),
    st.integers(min_value=1, max_value=5000).map(lambda n: nested(n, '{"a":', "}")),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                 max_leaves=8).map(repr),
)


@FUZZ
@given(argv=st.lists(ARG, max_size=8),
       which=st.sampled_from(["good", "good", "good", "broken", "dir", "missing"]),
       explicit=st.booleans())
def test_celery_submit_any_arguments_end_with_a_documented_exit_code_and_no_traceback(
        etc, argv, which, explicit):
    env = {"CELERYD_CONFIG": etc["good"]}
    if explicit:
        argv = [*argv, "--config", etc[which]]
    code, out, err = run_main(submit.main, argv, env)
    assert code in DOCUMENTED, (argv, code, err)
    assert "Traceback" not in out + err
    assert PASSWORD not in out + err
    if code not in (0, 6):
        # One problem, one line each, every line naming the program that speaks.
        assert err.strip(), (argv, code)
        assert all(line.startswith(("celery-submit:", "celeryd:")) for line in
                   err.splitlines()), err


@pytest.mark.parametrize("argv, code", [
    (["add", "4", "4"], 4),
    (["echo", nested(3000)], 2),  # too deep to be a JSON argument: bad input
    (["add", "--countdown", "nan"], 2),
    (["add", "--kwarg", "1x=2"], 2),
    ([], 2),
])
def test_celery_submit_as_a_process_prints_no_traceback(etc, argv, code):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYD_")}
    env.update(PYTHONPATH=str(REPO), CELERYD_CONFIG=etc["good"])
    result = subprocess.run([sys.executable, "-m", "celeryd_pkg.submit", *argv], env=env,
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


# --- the YAML config ----------------------------------------------------------------------

KEYS = ["broker", "worker", "tasks", "results", "client", "host", "port", "vhost", "user",
        "password", "connect_timeout", "heartbeat", "concurrency", "queues",
        "prefetch_multiplier", "name", "loglevel", "log_tasks", "broker_lost_grace", "modules",
        "pythonpath", "time_limit", "expires", "timeout", "queue", "metrics", "enabled",
        "listen", "bogus", "1", "null"]
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                   st.dates(), st.sampled_from(KEYS))
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3), max_leaves=10)
DOCUMENT = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5),
                           st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), VALUE,
                                           max_size=4) | VALUE, max_size=4)


def yaml_text(document):
    import yaml

    return yaml.safe_dump(document, allow_unicode=True, default_flow_style=None)


RAW = st.one_of(
    DOCUMENT.map(yaml_text),
    # Structurally valid YAML, cut or spliced at random: syntax errors of every kind.
    st.tuples(DOCUMENT.map(yaml_text), st.integers(0, 400), st.text(max_size=20)).map(
        lambda t: t[0][:t[1]] + t[2]),
    st.text(max_size=200),
    st.sampled_from(["broker: &a [*a]\n", "broker: !!python/object:os.system {}\n",
                     "? [a, b]\n: 1\n", "---\n---\n", "broker:\n\tport: 1\n", "%YAML 9.9\n",
                     "broker: {port: 5672, port: 5673}\n", "worker: {queues: [[]]}\n"]),
    st.integers(1, 5000).map(lambda n: "broker: " + nested(n)),
    st.integers(1, 5000).map(lambda n: "broker: " + "{a: " * n + "}" * n),
).map(lambda text: text.encode("utf-8", "surrogatepass"))
BYTES = st.one_of(RAW, st.binary(max_size=200))


@FUZZ
@given(data=BYTES)
def test_any_config_file_loads_or_is_refused_with_exit_3_and_one_line_per_problem(
        tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "celeryd.yaml"
    path.write_bytes(data)
    try:
        loaded = config.load(str(path), env={})
    except CelerydError as error:
        assert error.exit_code == 3
        lines = error.message.splitlines()
        assert lines and all(line.startswith(f"celeryd: {path}") for line in lines), lines
        assert "Traceback" not in error.message
    else:
        # Accepted: then every value has its schema type, nothing was taken on trust.
        assert isinstance(loaded.broker.port, int) and loaded.broker.port >= 1
        assert all(isinstance(queue, str) and queue for queue in loaded.worker.queues)
    assert path.read_bytes() == data  # reading never writes


# --- join: the URL that becomes the credentials file --------------------------------------

URL_PART = st.one_of(st.text(max_size=12), st.sampled_from(
    ["celery", "%2F", "%00", "[::1]", "host", "host:99999", "host:0", "h:5672",
     "@", ":", "/", "?x", "#y", "amqps", "amqp", "http", "celery%20x", " ", "\n"]))
URL = st.one_of(
    # The password slot always holds PASSWORD (plus noise): it must never be shown.
    st.tuples(st.sampled_from(["amqp", "amqps", "AMQP", "http", ""]), URL_PART, URL_PART,
              URL_PART, URL_PART).map(
        lambda p: f"{p[0]}://{p[1]}:{PASSWORD}{p[2]}@{p[3]}/{p[4]}"),
    st.text(max_size=60),
)


@FUZZ
@given(url=URL)
def test_join_with_any_url_exits_documented_never_leaves_a_half_written_file(
        tmp_path_factory, url):
    directory = tmp_path_factory.mktemp("join")
    main = directory / "celeryd.yaml"
    main.write_text("")
    creds = directory / "credentials"
    stdin = io.StringIO(url)
    saved = sys.stdin
    sys.stdin = stdin
    try:
        code, out, err = run_main(admin.main, ["join", "-", "--config", str(main),
                                               "--group", "root"])
    finally:
        sys.stdin = saved
    assert code in DOCUMENTED, (url, code, err)
    assert "Traceback" not in out + err
    leftovers = [p.name for p in directory.iterdir() if p.name not in ("celeryd.yaml",
                                                                        "credentials")]
    assert leftovers == []
    if code == 0:
        # Whole and valid: the loader accepts it and it holds the password given.
        loaded = config.load(str(main), env={})
        assert loaded.broker.password and creds.stat().st_mode & 0o777 == 0o640
        assert loaded.broker.password not in out + err
    else:
        assert not creds.exists()
    assert PASSWORD not in out + err
