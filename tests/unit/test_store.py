"""The result store's client side without a redis-server: options, errors, the SUBSCRIBE-then-GET
order, `celery-submit result` (arguments, output, exit codes) and the Python client's store mode."""

import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import redis.exceptions
from celery import _state

from celeryd_pkg import client, config, lookup, store, submit
from celeryd_pkg.errors import ConfigError, UsageError

REPO = Path(__file__).resolve().parents[2]
SECRET = "st0re-secret"
NOT_STORED = ("celery-submit: results are not stored (results.backend: rpc); set "
              "results.backend: redis to look results up later (README, 'Results you can "
              "come back to')\n")


@pytest.fixture
def etc(tmp_path):
    """Return a function: given celeryd.yaml text, its path (credentials written beside)."""
    def write(text="results:\n  backend: redis\n"):
        (tmp_path / "credentials").write_text(
            f"broker:\n  password: bp\nresults:\n  user: client-ci\n  password: {SECRET}\n")
        (tmp_path / "celeryd.yaml").write_text(text)
        return tmp_path / "celeryd.yaml"
    return write


def loaded(path):
    return config.load(str(path), env={})


class FakePubSub:
    """Records the commands it gets in the log it shares with FakeRedis; get_message hands
    out the queued messages."""

    def __init__(self, log, messages):
        self.log, self.messages = log, messages

    def subscribe(self, *channels):
        self.log.append(("SUBSCRIBE",) + channels)
        self.messages[:0] = [{"type": "subscribe", "channel": c.encode(), "data": 1}
                             for c in channels]

    def get_message(self, timeout=0):
        if self.messages:
            message = self.messages.pop(0)
            if message["type"] == "subscribe":
                self.log.append(("CONFIRMED", message["channel"].decode()))
            return message
        return None

    def close(self):
        self.log.append(("CLOSE-PUBSUB",))


class FakeRedis:
    stored, published, log = {}, [], []

    def __init__(self, **options):
        self.options = options

    def pubsub(self):
        return FakePubSub(self.log, self.published)

    def mget(self, keys):
        self.log.append(("MGET",) + tuple(keys))
        return [self.stored.get(key) for key in keys]

    def ping(self):
        self.log.append(("PING",))

    def close(self):
        pass


def meta(status, result):
    return json.dumps({"status": status, "result": result, "traceback": None,
                       "children": [], "date_done": None, "task_id": "x"}).encode()


@pytest.fixture
def fake_redis(monkeypatch):
    FakeRedis.stored, FakeRedis.published, FakeRedis.log = {}, [], []
    monkeypatch.setattr(redis, "Redis", FakeRedis)
    return FakeRedis


def message(task_id, status, result):
    return {"type": "message", "channel": f"celery-task-meta-{task_id}".encode(),
            "data": meta(status, result)}


def test_the_waiter_subscribes_and_waits_for_the_confirmation_before_it_gets(fake_redis, etc):
    fake_redis.stored["celery-task-meta-a"] = meta("SUCCESS", 8)
    fake_redis.published.append(message("b", "STARTED", None))  # not the last state: ignored
    fake_redis.published.append(message("b", "FAILURE", {"exc_type": "E"}))
    waiter = store.Waiter(loaded(etc()), ["a", "b", "c"])
    found = waiter.results(timeout=0.3)
    assert fake_redis.log[:5] == [
        ("SUBSCRIBE", "celery-task-meta-a", "celery-task-meta-b", "celery-task-meta-c"),
        ("CONFIRMED", "celery-task-meta-a"), ("CONFIRMED", "celery-task-meta-b"),
        ("CONFIRMED", "celery-task-meta-c"),
        ("MGET", "celery-task-meta-a", "celery-task-meta-b", "celery-task-meta-c")]
    assert {key: value["status"] for key, value in found.items()} == {"a": "SUCCESS",
                                                                      "b": "FAILURE"}


def test_looking_once_does_not_subscribe(fake_redis, etc):
    waiter = store.Waiter(loaded(etc()), ["a"], subscribe=False)
    assert waiter.results(timeout=5) == {}
    assert fake_redis.log == [("PING",), ("MGET", "celery-task-meta-a")]


def test_the_connection_options_carry_the_login_and_the_brokers_tls(etc, tmp_path):
    (tmp_path / "ca.pem").write_text("")
    options = store.connection_options(loaded(etc(
        f"broker:\n  host: mq\n  tls: true\n  ca_file: {tmp_path}/ca.pem\n  connect_timeout: 7\n"
        "results:\n  backend: redis\n  db: 1\n")))
    assert options == dict(host="mq", port=6380, db=1, username="client-ci", password=SECRET,
                           socket_connect_timeout=7, socket_timeout=7, ssl=True,
                           ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_check_hostname=True,
                           ssl_ca_certs=f"{tmp_path}/ca.pem")
    assert "ssl" not in store.connection_options(loaded(etc()))


@pytest.mark.parametrize("error, code, fragment", [
    (redis.exceptions.AuthenticationError("WRONGPASS invalid username-password pair"), 5,
     "the result store refused the login at redis://client-ci:***@localhost:6379/0"),
    (redis.exceptions.ResponseError("WRONGPASS invalid username-password pair"), 5,
     "check results.user and results.password"),
    (redis.exceptions.NoPermissionError("NOPERM this user has no permissions"), 5,
     "the account's ACL lacks it"),
    (redis.exceptions.ResponseError("NOPERM this user has no permissions to run 'set'"), 5,
     "the account's ACL lacks it"),
    (redis.exceptions.ConnectionError("Error 1 connecting to localhost:6379. [SSL: "
                                      "CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
     4, "TLS to the result store at localhost:6379 failed"),
    (redis.exceptions.ConnectionError("Error 111 connecting to localhost:6379. Connection refused."),
     4, "cannot reach the result store at localhost:6379 (Error 111"),
    (redis.exceptions.TimeoutError("Timeout connecting to server"), 4, "is redis-server running"),
])
def test_store_errors_are_one_line_exit_coded_and_masked(etc, error, code, fragment):
    translated = store.translate(error, loaded(etc()))
    assert translated.exit_code == code and fragment in translated.message
    assert SECRET not in translated.message and "\n" not in translated.message


def test_the_timeout_message_says_where_the_result_can_still_be_found(etc):
    rpc = store.timeout_error(loaded(etc("")), "ID", 0.5)
    assert rpc.exit_code == 6 and rpc.task_id == "ID"
    assert rpc.message == ("celery-submit: no result for task ID within 0.5s (is a worker "
                           "running? celeryd-admin check); " + NOT_STORED.partition(": ")[2][:-1])
    redis_backend = store.timeout_error(loaded(etc()), "ID", 30)
    assert redis_backend.message.endswith("; look it up later: celery-submit result ID")


@pytest.mark.parametrize("argv, looking_up", [
    (["result", "ID"], True), (["--config", "f", "result", "ID"], True),
    (["--config=f", "--json", "result", "ID"], True), (["add", "result"], False),
    (["--queue", "result", "add"], False), (["celeryd.result", "1"], False),
    (["--", "result"], False), ([], False),
])
def test_result_is_the_command_only_as_the_first_word_not_an_options_value(argv, looking_up):
    assert lookup.is_lookup(argv) is looking_up


def test_result_arguments(etc):
    args = lookup.parse_args(["--config", "f", "result", "a", "b", "--wait", "2.5", "--json"],
                             submit.Parser)
    assert (args.ids, args.wait, args.json, args.config) == (["a", "b"], 2.5, True, "f")
    assert lookup.parse_args(["result", "a"], submit.Parser).wait == 0


@pytest.mark.parametrize("argv, fragment", [
    (["result"], "the following arguments are required: ID"),
    (["result", "a b"], "result: 'a b': expected a task id"),
    (["result", "a", "--wait", "-1"], "--wait -1.0: expected seconds >= 0"),
    (["result", "a", "--timeout", "1"], "unrecognized arguments: --timeout"),
])
def test_bad_result_arguments_are_usage_errors(argv, fragment):
    with pytest.raises(UsageError) as info:
        lookup.parse_args(argv, submit.Parser)
    assert fragment in info.value.message and info.value.exit_code == 2


def test_result_under_rpc_exits_3_with_the_line(etc, capsys):
    assert submit.main(["result", "some-id", "--config", str(etc(""))]) == 3
    assert capsys.readouterr() == ("", NOT_STORED)


def test_result_prints_in_order_and_exits_6_before_1(fake_redis, etc, capsys):
    fake_redis.stored["celery-task-meta-ok"] = meta("SUCCESS", [1, "a"])
    fake_redis.stored["celery-task-meta-bad"] = meta(
        "FAILURE", {"exc_type": "ValueError", "exc_message": ["no"]})
    path = str(etc())
    assert submit.main(["result", "ok", "--config", path]) == 0
    assert capsys.readouterr() == ('[1, "a"]\n', "")
    assert submit.main(["result", "bad", "ok", "--config", path]) == 1
    assert capsys.readouterr() == ('[1, "a"]\n',
                                   "celery-submit: task bad raised ValueError: no\n")
    assert submit.main(["result", "bad", "gone", "ok", "--json", "--config", path]) == 6
    out, err = capsys.readouterr()
    assert [(line["id"], line["state"]) for line in map(json.loads, out.splitlines())] == [
        ("bad", "FAILURE"), ("gone", "PENDING"), ("ok", "SUCCESS")]
    assert err.splitlines() == [
        "celery-submit: task bad raised ValueError: no",
        "celery-submit: no result for gone (not done yet, older than results.expires, or "
        "never sent)"]


def test_batch_waiting_with_redis_is_refused_before_anything_is_sent(etc, capsys, tmp_path):
    (tmp_path / "lines").write_text('["add", [1, 1]]\n')
    assert submit.main(["--batch", str(tmp_path / "lines"), "--config", str(etc())]) == 3
    assert capsys.readouterr().err.startswith("celery-submit: --batch waits on direct reply-to")


def test_the_python_client_takes_results_from_the_store(etc, monkeypatch):
    default, current = _state.default_app, getattr(_state._tls, "current_app", None)
    try:
        app = client.load_app(str(etc()))
        assert type(app.backend).__name__ == "RetryingRedisBackend"
        assert app.conf.result_backend.endswith(f"+redis://client-ci:{SECRET}@localhost:6379/0")
        # A client gives up on the store after a few tries; the workers retry forever.
        assert app.conf.result_backend_always_retry is False
        # Its tasks carry no direct reply-to (the broker would refuse it on this channel).
        assert app.thread_oid != "amq.rabbitmq.reply-to"
        assert isinstance(app.publisher, store.Publisher)
        error = app.broker_error(redis.exceptions.ConnectionError("refused"))
        assert error.exit_code == 4 and "result store" in error.message
        monkeypatch.setitem(vars(client), "app", app)  # not the lazy, installed one
        with pytest.raises(ConfigError, match="submit_many waits on direct reply-to"):
            next(client.submit_many([("add", [1, 1])]))
    finally:
        _state.set_default_app(default)
        _state._set_current_app(current)


def test_celery_submit_imports_python3_redis_only_for_the_redis_backend(etc):
    script = ("import sys\nfrom celeryd_pkg import submit\n"
              "code = submit.main(['result', 'x', '--config', sys.argv[1]])\n"
              "print(code, 'redis' in sys.modules)\n")
    for text, expected in (("", "3 False"), ("results:\n  backend: redis\n  port: 1\n", "4 True")):
        result = subprocess.run([sys.executable, "-c", script, str(etc(text))], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.stdout.split("\n")[-2] == expected, result.stderr
