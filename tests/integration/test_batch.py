"""celery-submit --batch and client.submit_many against a real RabbitMQ and worker: one outcome
per line, streaming order, exit codes, returns and nacks, flat memory, a broker restart."""

import json
import re
import signal
import subprocess
import threading
import time
from collections import Counter

import amqp
import pytest

from tests.integration.broker import RabbitMQ
from tests.integration.conftest import PYTHON, clean_env, submit, write_config

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
KEYS = {"id", "line", "result", "state"}
HELD = "batch-held"  # a queue no worker consumes: what reaches it stays countable


def write_lines(path, lines):
    """Write one line per item: a string as is, anything else as JSON."""
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n"
                            for item in lines))
    return path


def parse_outcomes(stdout):
    """Return the outcome objects in printed order, checking keys (sorted, error only where
    the spec has one) and that no line got two outcomes."""
    outcomes = [json.loads(text) for text in stdout.splitlines()]
    for outcome in outcomes:
        assert list(outcome) == sorted(outcome), outcome
        error = set() if outcome["state"] in ("SUCCESS", "FAILURE") else {"error"}
        assert set(outcome) == KEYS | error, outcome
    assert len({outcome["line"] for outcome in outcomes}) == len(outcomes)
    return outcomes


def runs(worker_output, event="succeeded"):
    """Count, per task id, the worker's log lines of event (received, succeeded)."""
    return Counter(re.findall(r"Task [\w.]+\[([0-9a-f-]{36})\] " + event, worker_output))


def wait_until(predicate, timeout, what, details=lambda: ""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} in {timeout}s {details()}"
        time.sleep(0.2)


class Broker:
    """The test account's own AMQP connection, to declare odd topologies and count messages."""

    def __init__(self, node, account):
        self.connection = amqp.Connection(f"127.0.0.1:{node.port}", userid=account["user"],
                                          password=account["password"],
                                          virtual_host=account["vhost"])
        self.connection.connect()

    def declare(self, name, queue=True, **arguments):
        channel = self.connection.channel()
        channel.exchange_declare(name, "direct", durable=True, auto_delete=False)
        if queue:
            channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
            channel.queue_bind(name, name, name)
        channel.close()

    def depth(self, name):
        channel = self.connection.channel()
        try:
            return channel.queue_declare(name, passive=True).message_count
        finally:
            channel.close()

    def delete(self, name, queue=True):
        channel = self.connection.channel()
        if queue:
            channel.queue_delete(name)
        channel.exchange_delete(name)
        channel.close()


@pytest.fixture(scope="module")
def broker(rabbitmq, account):
    connection = Broker(rabbitmq, account)
    yield connection
    connection.connection.close()


@pytest.fixture
def held(broker):
    broker.declare(HELD)
    yield HELD
    broker.delete(HELD)


def mixed_line(n):
    """Line n of a mixed batch, and its result: mostly add, in both forms."""
    kind = n % 10
    if kind == 0:
        return ["echo", [f"line-{n}"]], f"line-{n}"
    if kind == 5:
        return {"task": "xsum", "args": [[n, 1, 2]]}, n + 3
    if kind == 3:
        return ["celeryd.add", [], {"x": n, "y": 2}], n + 2
    if kind == 7:
        return {"task": "mul", "kwargs": {"x": n, "y": 2}, "queue": "celery"}, 2 * n
    return ({"task": "add", "args": [n, n]} if n % 2 else ["add", [n, n]]), 2 * n


def test_every_line_gets_one_outcome_with_its_result(shared_worker, tmp_path):
    config, _ = shared_worker
    pairs = [mixed_line(n) for n in range(1, 201)]
    lines = [line for line, _ in pairs]
    # Blank lines get no outcome, but count: line numbers are physical.
    lines[50:50] = ["", "   "]
    expected = {(n if n <= 50 else n + 2): value for n, (_, value) in enumerate(pairs, 1)}
    result = submit(config, "--batch", str(write_lines(tmp_path / "tasks.jsonl", lines)))
    assert (result.returncode, result.stderr) == (0, "")
    outcomes = parse_outcomes(result.stdout)
    assert {o["line"]: o["result"] for o in outcomes} == expected
    assert {o["state"] for o in outcomes} == {"SUCCESS"}
    assert len({o["id"] for o in outcomes}) == 200 and all(UUID.match(o["id"]) for o in outcomes)


def test_outcomes_stream_in_order_of_completion(shared_worker, tmp_path):
    config, _ = shared_worker
    path = write_lines(tmp_path / "tasks.jsonl", [["sleep", [3]]] + [["add", [n, n]] for n in range(2, 12)])
    process = subprocess.Popen([PYTHON, "-m", "celeryd_pkg.submit", "--config", str(config), "--batch",
                                str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=clean_env(), cwd="/")
    arrivals = [(time.monotonic(), json.loads(text)) for text in iter(process.stdout.readline, "")]
    assert process.wait(timeout=60) == 0, process.stderr.read()
    order = [outcome["line"] for _, outcome in arrivals]
    assert sorted(order) == list(range(1, 12)) and order[-1] == 1
    assert arrivals[-1][1]["result"] == 3
    # The fast ones were printed as they completed, not held back until the end.
    assert arrivals[-1][0] - arrivals[-2][0] > 1.5


def test_a_raising_line_is_failure_exit_1_and_the_others_succeed(shared_worker, tmp_path):
    config, _ = shared_worker
    lines = [["add", [1, 1]], ["add", [1, "x"]], ["xsum", [5]], ["add", [2, 2]], ["nosuch.task"]]
    result = submit(config, "--batch", str(write_lines(tmp_path / "t.jsonl", lines)))
    assert result.returncode == 1
    outcomes = {o["line"]: o for o in parse_outcomes(result.stdout)}
    assert {n: o["state"] for n, o in outcomes.items()} == {
        1: "SUCCESS", 2: "FAILURE", 3: "FAILURE", 4: "SUCCESS", 5: "FAILURE"}
    assert outcomes[2]["result"]["exc_type"] == outcomes[3]["result"]["exc_type"] == "TypeError"
    assert "unsupported operand" in str(outcomes[2]["result"]["exc_message"])
    assert outcomes[5]["result"]["exc_type"] == "NotRegistered"
    assert result.stderr.startswith("celery-submit: 5 lines: ") and len(result.stderr.splitlines()) == 1


def test_timeout_is_reported_for_its_line_exit_6_beating_a_failure(shared_worker, tmp_path):
    config, worker = shared_worker
    lines = [["sleep", [3]], ["add", [1, "x"]]] + [["add", [n, n]] for n in range(3, 8)]
    result = submit(config, "--batch", str(write_lines(tmp_path / "t.jsonl", lines)), "--timeout", "1.5")
    assert result.returncode == 6, result.stderr
    outcomes = {o["line"]: o for o in parse_outcomes(result.stdout)}
    wait_until(lambda: runs(worker.output())[outcomes[1]["id"]], 20, "end of the sleep")
    assert sorted(outcomes) == list(range(1, 8))
    assert (outcomes[1]["state"], outcomes[2]["state"]) == ("TIMEOUT", "FAILURE")
    assert outcomes[1]["error"] and UUID.match(outcomes[1]["id"])
    assert all(outcomes[n]["state"] == "SUCCESS" and outcomes[n]["result"] == 2 * n for n in range(3, 8))
    assert result.stderr.startswith("celery-submit: 7 lines: ")


def test_a_slow_line_waits_while_results_keep_coming_and_times_out_in_silence(shared_worker,
                                                                             tmp_path):
    """--timeout bounds the broker's silence, not each line: a long queue drains at the
    workers' pace without timing out, and a line still pending once nothing has come for
    --timeout seconds is TIMEOUT."""
    config, worker = shared_worker
    # The second child answers every 0.5 s for 3.5 s, longer than the timeout of 2 s; line 1
    # (10 s) is still running when that stream ends and the broker falls silent.
    lines = [["sleep", [10]]] + [["sleep", [0.5]]] * 7
    started = time.monotonic()
    result = submit(config, "--batch", str(write_lines(tmp_path / "t.jsonl", lines)),
                    "--timeout", "2")
    elapsed = time.monotonic() - started
    outcomes = {o["line"]: o for o in parse_outcomes(result.stdout)}
    try:
        assert sorted(outcomes) == list(range(1, 9))
        assert {n: outcomes[n]["state"] for n in range(2, 9)} == dict.fromkeys(range(2, 9),
                                                                                 "SUCCESS")
        assert (outcomes[1]["state"], result.returncode) == ("TIMEOUT", 6), result.stderr
        assert "nothing from the broker for 2s" in outcomes[1]["error"]
        assert 3.5 + 2 <= elapsed < 9, elapsed
    finally:  # the next tests want both children free
        wait_until(lambda: runs(worker.output())[outcomes[1]["id"]], 20, "end of the sleep")


def test_a_batch_timeout_must_be_above_0(shared_worker):
    config, _ = shared_worker
    result = submit(config, "--batch", "-", "--timeout", "0", input='["add", [2, 2]]\n')
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "celery-submit: --timeout 0: with --batch, expected seconds > 0\n"


def test_no_wait_prints_the_ids_in_input_order_and_the_worker_runs_them(shared_worker, tmp_path):
    config, worker = shared_worker
    path = write_lines(tmp_path / "t.jsonl", [["echo", [n]] for n in range(60)])
    result = submit(config, "--batch", str(path), "--no-wait")
    assert (result.returncode, result.stderr) == (0, "")
    ids = result.stdout.split()
    assert len(ids) == len(set(ids)) == 60 and all(UUID.match(task_id) for task_id in ids)
    wait_until(lambda: all(runs(worker.output())[task_id] for task_id in ids), 30, "results")
    # One queue, one consumer: the worker receives them in the order they were published.
    received = re.findall(r"Task celeryd\.echo\[([0-9a-f-]{36})\] received", worker.output())
    assert [task_id for task_id in received if task_id in set(ids)] == ids


def test_a_missing_queue_on_line_3_is_exit_4_and_nothing_is_published(shared_worker, held, broker,
                                                                     tmp_path):
    config, _ = shared_worker
    lines = [["add", [1, 1]], {"task": "add", "args": [2, 2], "queue": HELD},
             {"task": "add", "args": [1, 1], "queue": "nope"}, ["add", [4, 4]], ["add", [5, 5]]]
    result = submit(config, "--batch", str(write_lines(tmp_path / "t.jsonl", lines)), "--queue", HELD)
    assert (result.returncode, result.stdout) == (4, "")
    assert "no queue 'nope'" in result.stderr and "Traceback" not in result.stderr
    assert broker.depth(HELD) == 0  # lines 1, 2, 4 and 5 would all be here


def test_unroutable_lines_are_returned_exit_4_and_the_others_succeed(shared_worker, broker, tmp_path):
    config, _ = shared_worker
    broker.declare("orphan", queue=False)  # an exchange with no queue bound
    try:
        lines = [["add", [1, 1]], {"task": "add", "args": [1, 1], "queue": "orphan"},
                 ["add", [3, 3]], {"task": "echo", "args": [4], "queue": "orphan"}]
        result = submit(config, "--batch", str(write_lines(tmp_path / "t.jsonl", lines)))
    finally:
        broker.delete("orphan", queue=False)
    assert result.returncode == 4
    outcomes = {o["line"]: o for o in parse_outcomes(result.stdout)}
    assert {n: o["state"] for n, o in outcomes.items()} == {
        1: "SUCCESS", 2: "RETURNED", 3: "SUCCESS", 4: "RETURNED"}
    assert outcomes[2]["error"] and (outcomes[1]["result"], outcomes[3]["result"]) == (2, 6)
    assert result.stderr.startswith("celery-submit: 4 lines: ")


def test_a_full_queue_nacks_each_line_it_refuses(shared_worker, broker, tmp_path):
    config, _ = shared_worker
    broker.declare("tiny", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    try:
        path = write_lines(tmp_path / "t.jsonl", [{"task": "echo", "args": [n], "queue": "tiny"}
                                                  for n in range(1, 6)])
        result = submit(config, "--batch", str(path), "--no-wait")
        depth = broker.depth("tiny")
        again = submit(config, "--batch", str(path))  # wait mode: the queue is still full
    finally:
        broker.delete("tiny")
    assert result.returncode == 4 and depth == 1
    assert len(result.stdout.split()) == 1 and UUID.match(result.stdout.strip())
    *nacked, summary = result.stderr.splitlines()
    assert [re.match(r"celery-submit: line (\d): NACKED: .+", text)[1] for text in nacked] == list("2345")
    assert summary.startswith("celery-submit: 5 lines: ")
    assert again.returncode == 4
    assert {o["state"] for o in parse_outcomes(again.stdout)} == {"NACKED"}


def test_stdin_works_as_a_file_does_and_countdown_delays(shared_worker):
    config, _ = shared_worker
    text = ('{"task": "add", "args": [100, 1], "countdown": 2}\n'
            + "".join(json.dumps(["add", [n, n]]) + "\n" for n in range(2, 31)) + "\n" + '["echo", ["é"]]\n')
    started = time.monotonic()
    result = submit(config, "--batch", "-", "--window", "1", input=text)
    assert (result.returncode, result.stderr) == (0, "")
    outcomes = parse_outcomes(result.stdout)
    assert {o["line"]: o["result"] for o in outcomes} == {1: 101, **{n: 2 * n for n in range(2, 31)}, 32: "é"}
    assert outcomes[-1]["line"] == 1 and time.monotonic() - started > 1.8
    empty = submit(config, "--batch", "-", input="\n  \n")
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")  # nothing to do


def test_exit_5_when_the_broker_refuses_the_login(tmp_path, rabbitmq, account):
    config = write_config(tmp_path, rabbitmq, dict(account, password="not-the-password"))
    result = submit(config, "--batch", "-", input='["add", [1, 1]]\n')
    assert (result.returncode, result.stdout) == (5, "")
    assert "refused the login" in result.stderr and "not-the-password" not in result.stderr


def test_memory_stays_flat_as_the_input_grows(shared_worker, held, broker, tmp_path):
    config, _ = shared_worker
    line = json.dumps({"task": "echo", "args": ["x" * 200]}) + "\n"
    peaks = {}
    for count in (2000, 20000):
        path = tmp_path / f"{count}.jsonl"
        path.write_text(line * count)
        report = tmp_path / f"{count}.rss"
        result = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", str(report), PYTHON, "-m", "celeryd_pkg.submit",
             "--config", str(config), "--batch", str(path), "--queue", HELD, "--no-wait"],
            capture_output=True, text=True, env=clean_env(), cwd="/", timeout=120)
        assert result.returncode == 0 and len(result.stdout.split()) == count, result.stderr
        peaks[count] = int(report.read_text().split()[-1])
    assert broker.depth(HELD) == 22000
    # Holding the 20,000 lines (4.6 MB of text) would add well over this.
    assert peaks[20000] - peaks[2000] < 4096, peaks


API = """\
import json
from celeryd_pkg.client import app, submit_many
from celeryd_pkg.errors import UsageError
def show(outcomes):
    for outcome in outcomes:
        print(json.dumps(outcome._asdict()), flush=True)
"""


def run_api(config, body):
    result = subprocess.run([PYTHON, "-c", API + body], capture_output=True, text=True, cwd="/",
                            timeout=120, env=clean_env(CELERYD_CONFIG=str(config)))
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_submit_many_takes_dicts_lists_tuples_and_signatures(shared_worker):
    config, _ = shared_worker
    result = run_api(config, (
        "forms = [lambda i: {'task': 'add', 'args': [i, i]}, lambda i: ['add', [i, i]],\n"
        "         lambda i: ('celeryd.add', (i,), {'y': i}), lambda i: app.signature('celeryd.add', (i, i))]\n"
        "show(submit_many([forms[i % 4](i) for i in range(100)], timeout=60))\n"))
    assert result.returncode == 0
    outcomes = [json.loads(text) for text in result.stdout.splitlines()]
    assert sorted(o["index"] for o in outcomes) == list(range(100))
    assert all((o["state"], o["result"], o["error"]) == ("SUCCESS", 2 * o["index"], None) for o in outcomes)
    assert len({o["id"] for o in outcomes}) == 100


def test_submit_many_checks_a_whole_list_before_sending_any(shared_worker, held, broker):
    config, _ = shared_worker
    result = run_api(config, (
        f"items = [{{'task': 'echo', 'args': [1], 'queue': '{HELD}'}}] * 3 + [{{'task': 'add', 'args': 5}}]\n"
        "for items in (items, iter(items[3:])):\n"
        "    try:\n        show(submit_many(items, wait=False))\n"
        "    except UsageError as error:\n        print('UsageError', error.message)\n"))
    assert result.returncode == 0
    in_list, in_iterator = result.stdout.splitlines()
    assert in_list.startswith("UsageError") and re.search(r"\b3\b", in_list) and "args" in in_list
    assert in_iterator.startswith("UsageError") and re.search(r"\b0\b", in_iterator)
    assert broker.depth(HELD) == 0


def test_submit_many_without_waiting_yields_sent_in_input_order(shared_worker, held, broker):
    config, worker = shared_worker
    result = run_api(config, (
        "items = [['echo', [i]] for i in range(30)]\n"
        "show(submit_many(iter(items), wait=False))\n"
        f"show(submit_many([app.signature('celeryd.echo', (1,), queue='{HELD}'), ['echo', [2]],\n"
        f"                  {{'task': 'echo', 'queue': '{HELD}', 'args': [3]}}], wait=False, queue='{HELD}'))\n"))
    assert result.returncode == 0
    outcomes = [json.loads(text) for text in result.stdout.splitlines()]
    assert [o["index"] for o in outcomes] == list(range(30)) + [0, 1, 2]
    assert {o["state"] for o in outcomes} == {"SENT"} and len({o["id"] for o in outcomes}) == 33
    assert broker.depth(HELD) == 3  # the queue option of a signature, of a dict, and queue=
    wait_until(lambda: all(runs(worker.output())[o["id"]] for o in outcomes[:30]), 30, "results")


def test_a_broker_restart_mid_batch_leaves_one_outcome_per_line_and_no_duplicates(
        tmp_path, start_worker):
    """10,000 lines; the broker stops once 200 results are in. Every line ends with
    one outcome; what was confirmed runs (its result may be lost); nothing the client reported
    as not sent ever runs; no message runs twice except the few the worker held unacked when
    the broker went down (late acks redeliver those by design)."""
    from celeryd_pkg import config as config_module

    node = RabbitMQ(tmp_path / "rabbitmq")
    account = {"user": "batch", "password": "batch-restart-pw-0123", "vhost": "batch"}
    try:
        node.start()
        node.add_account(account["user"], account["password"], account["vhost"])
        config = write_config(tmp_path / "etc", node, account)
        worker = start_worker(config)
        path = write_lines(tmp_path / "t.jsonl", [["add", [n, n]] for n in range(1, 10001)])
        process = subprocess.Popen(
            [PYTHON, "-m", "celeryd_pkg.submit", "--config", str(config), "--batch", str(path),
             "--timeout", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=clean_env(), cwd="/")
        printed = []

        def read():
            for text in process.stdout:
                printed.append(text)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            wait_until(lambda: len(printed) >= 200 or process.poll() is not None, 60, "200 results")
            # A graceful stop, as rabbitmqctl's: but at once, not after its own VM has booted.
            node.process.send_signal(signal.SIGTERM)
            node.process.wait(timeout=60)
            node.process = None
            assert process.wait(timeout=60) in (4, 6)  # no reconnect: it reports and exits
        finally:
            process.kill()
        reader.join(timeout=10)
        stderr = process.stderr.read()
        node.start()
        outcomes = parse_outcomes("".join(printed))
        assert sorted(o["line"] for o in outcomes) == list(range(1, 10001))
        states = Counter(o["state"] for o in outcomes)
        assert set(states) <= {"SUCCESS", "UNCONFIRMED", "LOST", "NOT_SENT"}, states
        assert states["SUCCESS"] < 10000, "the broker stopped after the batch had finished"
        assert process.returncode == (4 if states["UNCONFIRMED"] + states["NOT_SENT"] else 6)
        assert stderr.splitlines()[-1].startswith("celery-submit: 10000 lines: "), stderr
        assert all(o["result"] == 2 * o["line"] for o in outcomes if o["state"] == "SUCCESS")
        ids = {state: {o["id"] for o in outcomes if o["state"] == state and o["id"]} for state in states}
        stored = ids.get("SUCCESS", set()) | ids.get("LOST", set())
        assert len(stored) == states["SUCCESS"] + states["LOST"]  # ids unique

        # The worker reconnects by itself and drains the queue: every stored task runs.
        wait_until(lambda: stored <= set(runs(worker.output())), 180, "run of every stored task",
                   lambda: (f"{states}: {len(stored - set(runs(worker.output())))} not run, "
                            f"{queue_total(node, account['vhost'])} queued; worker log ends:\n"
                            + "\n".join(worker.output().splitlines()[-40:])))
        wait_until(lambda: queue_total(node, account["vhost"]) == 0, 60, "empty queue")
        time.sleep(1)
        ran = runs(worker.output())
        assert set(ran) <= stored | ids.get("UNCONFIRMED", set()), "the worker ran a task no line reported"
        assert not set(ran) & ids.get("NOT_SENT", set()), "a line reported NOT_SENT was sent"
        settings = config_module.load(str(config), env={}).worker
        twice = {task_id: count for task_id, count in ran.items() if count > 1}
        print(f"outcomes {dict(states)}; {len(ran)} tasks ran, {len(twice)} of them twice")
        assert sum(twice.values()) - len(twice) <= settings.concurrency * settings.prefetch_multiplier, twice
    finally:
        node.close()


def queue_total(node, vhost):
    """Messages in the celery queue, ready and unacknowledged."""
    listing = node.ctl("list_queues", "-p", vhost, "name", "messages").stdout.split()
    return int(listing[listing.index("celery") + 1])
