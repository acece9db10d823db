"""Throughput rows of `make bench`: many tasks, from the start of the submitting process until
every result is back (whole-process wall time, so imports and connects count for everyone),
celeryd against stock Celery on the same private RabbitMQ, in the same run.

celeryd: `celery-submit --batch FILE` and `celeryd_pkg.client.submit_many` against a celeryd
worker (its reliable settings). Stock Celery, one vhost each: A with default settings, B with
celeryd's reliable settings (acks_late, reject_on_worker_lost, prefetch 1, confirm_publish);
its client is `send_task` in a loop, then one `ResultSet(...).get()` (a loop over `.get()`
stalls on the rpc backend, facts.md).

The cost of task events: the batch path against a celeryd worker with worker.send_events on
and one with it off (the default), in the same run; `bench.py events` runs that alone.
"""

import json
import statistics
import subprocess
import sys
import time
from collections import namedtuple

from tests.integration.conftest import REPO, WorkerProcess, clean_env, write_config

__all__ = ["Row", "celeryd_worker", "throughput_rows", "events_rows", "scaling_rows"]

PYTHON = "/usr/bin/python3"
RUNS = 3  # whole runs per measure; BENCH_RUNS scales the cold rows only
SIZES = (2_000, 20_000)
CONCURRENCIES = (1, 2, 4)
# (bytes, label, tasks): 1 MB tasks move 2 MB each through the broker, fewer of them do.
PAYLOADS = ((100, "100 B", 2_000), (10_000, "10 kB", 2_000), (1_000_000, "1 MB", 200))
# One line of the table. better: "lower" (seconds, MiB) or "higher" (tasks/s); target: the
# ratio celeryd/stock to reach; reliable: stock Celery with celeryd's settings, or None.
Row = namedtuple("Row", "name ours reference unit better target reliable", defaults=(None,))

# What /usr/bin/celery-submit runs once installed (the console_scripts wrapper).
ENTRY_POINT = "import sys; from celeryd_pkg.submit import main; sys.exit(main())"

STOCK_APP = '''\
"""Stock Celery with celeryd's two built-in tasks under their names."""
import os
from pathlib import Path

from celery import Celery, signals

app = Celery("stockbench", broker=os.environ["BENCH_BROKER_URL"], backend="rpc://")
if os.environ.get("BENCH_RELIABLE"):
    # celeryd's reliable settings (celeryd_pkg/settings.py) on stock Celery.
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                    worker_prefetch_multiplier=1, result_persistent=True,
                    broker_transport_options={"confirm_publish": True})


@app.task(name="celeryd.add")
def add(x, y):
    return x + y


@app.task(name="celeryd.echo")
def echo(value):
    return value


@signals.worker_ready.connect
def _ready(**_):
    Path(os.environ["BENCH_READY_FILE"]).touch()
'''

STOCK_CLIENT = '''\
import sys
from celery.result import ResultSet
from stockapp import app

task, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
args = (4, 4) if task == "celeryd.add" else ("x" * size,)
results = [app.send_task(task, args) for _ in range(count)]
values = ResultSet(results).get(timeout=600)
expected = 8 if task == "celeryd.add" else args[0]
print(sum(value == expected for value in values))
'''

MANY_CLIENT = '''\
import sys
from celeryd_pkg.client import submit_many

task, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
line = ["add", [4, 4]] if task == "celeryd.add" else ["echo", ["x" * size]]
print(sum(outcome.state == "SUCCESS" for outcome in submit_many([line] * count)))
'''


def _run(command, env, cwd="/"):
    """Run command; return (wall seconds, stdout). Any failure stops the bench."""
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd,
                          timeout=1800)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


class StockWorker:
    """`celery -A stockapp worker -c N` with default settings, or celeryd's (reliable)."""

    def __init__(self, bench, concurrency, reliable):
        self.ready_file = bench.tmp / f"stock-ready-{time.monotonic_ns()}"
        self.log = open(bench.tmp / f"stock-worker-{time.monotonic_ns()}.log", "w")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "stockapp", "worker", "-c", str(concurrency)],
            env=bench.stock_env(reliable, BENCH_READY_FILE=str(self.ready_file)),
            stdout=self.log, stderr=subprocess.STDOUT, cwd=bench.app_dir)
        deadline = time.monotonic() + 60
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"stock worker not ready; see {self.log.name}")
            time.sleep(0.05)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def celeryd_worker(config, tmp, concurrency=2):
    """A celeryd WorkerProcess, READY (it reads its notify socket as systemd does)."""
    process = WorkerProcess(config, tmp, "-c", str(concurrency))
    try:
        process.wait_for("READY=1")
    except BaseException:
        process.close()
        raise
    return process


class Bench:
    """One celeryd config and two stock Celery apps, each on its own vhost of node."""

    def __init__(self, node, tmp, prefix):
        """prefix: names this bench's users and vhosts apart from another's on node."""
        self.tmp = tmp / prefix
        self.app_dir = self.tmp / "stockapp"
        self.app_dir.mkdir(parents=True)
        self.urls = {}
        for reliable in (False, True):
            user = f"{prefix}-stock{'-reliable' if reliable else ''}"
            node.add_account(user, f"{user}-password", user)
            self.urls[reliable] = f"amqp://{user}:{user}-password@127.0.0.1:{node.port}/{user}"
        account = {"user": f"{prefix}-celeryd", "password": f"{prefix}-password",
                   "vhost": f"{prefix}-celeryd"}
        node.add_account(account["user"], account["password"], account["vhost"])
        # Timeouts far beyond any run: a disturbed machine slows a row, it does not fail it.
        self.config = write_config(self.tmp / "etc", node, account,
                                   extra="client:\n  timeout: 600\n")
        (self.app_dir / "stockapp.py").write_text(STOCK_APP)
        (self.app_dir / "stock_client.py").write_text(STOCK_CLIENT)
        (self.app_dir / "many_client.py").write_text(MANY_CLIENT)
        self.batch_files = {}

    def stock_env(self, reliable, **extra):
        env = clean_env(PYTHONPATH=f"{self.app_dir}:{REPO}", BENCH_BROKER_URL=self.urls[reliable],
                        **extra)
        if reliable:
            env["BENCH_RELIABLE"] = "1"
        return env

    def batch_file(self, task, count, size):
        """A --batch input of count identical lines, written once."""
        key = (task, count, size)
        if key not in self.batch_files:
            line = ["add", [4, 4]] if task == "celeryd.add" else ["echo", ["x" * size]]
            path = self.tmp / f"batch-{len(self.batch_files)}.jsonl"
            with open(path, "w") as out:
                out.writelines(json.dumps(line) + "\n" for _ in range(count))
            self.batch_files[key] = path
        return self.batch_files[key]

    def batch(self, task, count, size=0, config=None):
        """celery-submit --batch, as installed (with config, default self.config); return
        tasks/s."""
        elapsed, out = _run([PYTHON, "-c", ENTRY_POINT, "--config", str(config or self.config),
                             "--batch", str(self.batch_file(task, count, size))], clean_env())
        states = [json.loads(line)["state"] for line in out.splitlines()]
        if states.count("SUCCESS") != count:
            raise RuntimeError(f"--batch: {states.count('SUCCESS')} of {count} succeeded")
        return count / elapsed

    def many(self, task, count, size=0):
        """submit_many from a Python script; return tasks/s."""
        return self._script("many_client.py", clean_env(CELERYD_CONFIG=str(self.config)),
                            task, count, size)

    def stock(self, reliable, task, count, size=0):
        """Stock Celery's send_task loop and ResultSet.get(); return tasks/s."""
        return self._script("stock_client.py", self.stock_env(reliable), task, count, size)

    def _script(self, script, env, task, count, size):
        elapsed, out = _run([PYTHON, str(self.app_dir / script), task, str(count), str(size)],
                            env, cwd=self.app_dir)
        if int(out.split()[-1]) != count:
            raise RuntimeError(f"{script}: {out.strip()} of {count} tasks succeeded")
        return count / elapsed


def _medians(label, measures, runs=RUNS):
    """measures: name -> callable returning tasks/s. Run them interleaved runs times, so
    drift on a noisy machine hits all alike; return name -> median."""
    samples = {name: [] for name in measures}
    for _ in range(runs):
        for name, measure in measures.items():
            samples[name].append(measure())
            # The whole bench takes many minutes: show it is moving.
            print(f"bench: {label}, {name}: {samples[name][-1]:,.0f} tasks/s", file=sys.stderr,
                  flush=True)
    return {name: statistics.median(values) for name, values in samples.items()}


def throughput_rows(node, tmp):
    """Batch CLI and submit_many against stock Celery A (defaults) and B (reliable), worker
    concurrency 2, no-op `celeryd.add` tasks; return Rows."""
    bench = Bench(node, tmp, "throughput")
    ours = celeryd_worker(bench.config, bench.tmp)
    stock_a = stock_b = None
    try:
        stock_a = StockWorker(bench, 2, False)
        stock_b = StockWorker(bench, 2, True)
        rows = []
        for count in SIZES:
            got = _medians(f"{count:,} add", {
                "batch": lambda: bench.batch("celeryd.add", count),
                "many": lambda: bench.many("celeryd.add", count),
                "stock": lambda: bench.stock(False, "celeryd.add", count),
                "reliable": lambda: bench.stock(True, "celeryd.add", count),
            })
            for key, what in (("batch", "celery-submit --batch"), ("many", "submit_many")):
                rows.append(Row(f"{what}, {count:,} add, submit to all results", got[key],
                                got["stock"], "tasks/s", "higher", 1.0, got["reliable"]))
        return rows
    finally:
        for worker in (stock_b, stock_a, ours):
            if worker is not None:
                worker.close()


def events_rows(node, tmp, count=2_000, runs=RUNS):
    """celery-submit --batch of count `celeryd.add` against a celeryd worker with
    worker.send_events on, the same worker with the default (off) as the reference, each on
    its own vhost, nothing consuming the events (the broker drops them: the worker's cost
    alone); return [Row]."""
    bench = Bench(node, tmp, "events")
    account = {"user": "events-on", "password": "events-on-password", "vhost": "events-on"}
    node.add_account(account["user"], account["password"], account["vhost"])
    events_config = write_config(bench.tmp / "etc-events", node, account, extra=(
        "client:\n  timeout: 600\nworker:\n  send_events: true\n"))
    quiet = loud = None
    try:
        quiet = celeryd_worker(bench.config, bench.tmp)
        loud = celeryd_worker(events_config, bench.tmp / "etc-events")
        got = _medians(f"{count:,} add, task events", {
            "off": lambda: bench.batch("celeryd.add", count),
            "on": lambda: bench.batch("celeryd.add", count, config=events_config),
        }, runs)
    finally:
        for worker in (loud, quiet):
            if worker is not None:
                worker.close()
    # Events are worth it if they cost at most a quarter of the throughput.
    return [Row(f"celery-submit --batch, {count:,} add, worker.send_events on; reference: "
                f"celeryd with it off (the default)", got["on"], got["off"], "tasks/s",
                "higher", 0.75)]


def scaling_rows(node, tmp):
    """The batch path at worker concurrency 1, 2, 4 and payloads 100 B, 10 kB, 1 MB (an echo
    task), stock Celery with defaults beside it; return (concurrency, label, tasks, ours,
    stock) tuples."""
    bench = Bench(node, tmp, "scaling")
    rows = []
    for concurrency in CONCURRENCIES:
        ours = celeryd_worker(bench.config, bench.tmp, concurrency)
        stock = None
        try:
            stock = StockWorker(bench, concurrency, False)
            for size, label, count in PAYLOADS:
                got = _medians(f"-c {concurrency}, {label} echo", {
                    "batch": lambda: bench.batch("celeryd.echo", count, size),
                    "stock": lambda: bench.stock(False, "celeryd.echo", count, size),
                })
                rows.append((concurrency, label, count, got["batch"], got["stock"]))
        finally:
            for worker in (stock, ours):
                if worker is not None:
                    worker.close()
    return rows

