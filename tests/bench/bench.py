"""`make bench`: celeryd against stock Celery, measured in the same run, as a table of ratios.

Rows: celery-submit's cold start (wall time and max RSS of the whole process) against a
seed-style client (`from celery import Celery`, rpc backend, `send_task(...).get()`), worker
start to READY=1 against stock `celery worker` start to "ready.", and throughput (tasks/s of
many tasks, throughput.py): the batch CLI and submit_many against stock Celery, what task
events (worker.send_events) cost the batch path, and how the batch path scales with worker
concurrency and payload size.

`bench.py events [COUNT [RUNS]]` measures only the cost of task events (2,000 tasks, 3 runs by
default) and prints its row; `bench.py cold` only the cold-start rows.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.integration.broker import RabbitMQ  # noqa: E402
from tests.integration.conftest import WorkerProcess, clean_env, write_config  # noqa: E402
from tests.bench.throughput import (  # noqa: E402
    ENTRY_POINT, RUNS as THROUGHPUT_RUNS, celeryd_worker, events_rows, Row, scaling_rows,
    throughput_rows)

PYTHON = "/usr/bin/python3"
# Runs of the cold rows; the throughput rows always take THROUGHPUT_RUNS (each is seconds long).
RUNS = int(os.environ.get("BENCH_RUNS", "15"))

SEED_CLIENT = """\
from celery import Celery
app = Celery("tasks", broker={url!r}, backend="rpc://")
print(app.send_task("celeryd.add", (4, 4)).get(timeout=30))
"""

SEED_APP = """\
from celery import Celery
app = Celery("tasks", broker={url!r}, backend="rpc://")
"""


def timed(command, env):
    """Run command; return (seconds, max RSS in MiB, stdout). GNU time forks it, since a
    child forked from this (large) process would inherit our peak RSS in ru_maxrss."""
    with tempfile.NamedTemporaryFile("r") as report:
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%M", *command],
                              env=env, capture_output=True, text=True, cwd="/")
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{command} failed: {proc.stderr}")
        return elapsed, int(report.read().split()[-1]) / 1024, proc.stdout


def submit_rows(config, seed_client, env):
    ours, reference = [], []
    for _ in range(RUNS):  # interleaved, so drift on a noisy machine hits both alike
        ours.append(timed([PYTHON, "-c", ENTRY_POINT, "--config", str(config),
                           "add", "4", "4"], env))
        reference.append(timed([PYTHON, str(seed_client)], env))
    for runs in (ours, reference):
        assert all(out == "8\n" for _, _, out in runs), runs
    wall = [statistics.median(r[0] for r in runs) for runs in (ours, reference)]
    rss = [statistics.median(r[1] for r in runs) for runs in (ours, reference)]
    return [Row("celery-submit add 4 4, cold, wall", wall[0], wall[1], "s", "lower", 0.45),
            # The design's RSS target is absolute: 20 MiB.
            Row("celery-submit add 4 4, max RSS", rss[0], rss[1], "MiB", "lower", 20 / rss[1])]


def stock_worker_ready(app_dir, env, tmp):
    log = tmp / f"stock-{time.monotonic_ns()}.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "seedapp", "worker", "-c", "2", "-l", "info"],
            env=dict(env, PYTHONPATH=f"{app_dir}:{REPO}"), stdout=out, stderr=subprocess.STDOUT,
            cwd=app_dir)
        try:
            while " ready." not in log.read_text():
                if proc.poll() is not None or time.perf_counter() - started > 60:
                    raise RuntimeError(log.read_text())
                time.sleep(0.005)
            return time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait()


def our_worker_ready(config, tmp):
    started = time.perf_counter()
    worker = WorkerProcess(config, tmp)
    try:
        worker.wait_for("READY=1")
        return time.perf_counter() - started
    finally:
        worker.close()


def worker_rows(config, app_dir, env, tmp):
    ours, reference = [], []
    for _ in range(max(RUNS // 3, 3)):
        ours.append(our_worker_ready(config, tmp))
        reference.append(stock_worker_ready(app_dir, env, tmp))
    return [Row("worker start to READY=1 vs stock 'ready.'", statistics.median(ours),
                statistics.median(reference), "s", "lower", 0.5)]


TABLE_NOTE = """\
ratio = celeryd / stock Celery. Rows in s or MiB: lower is better, the target is a ceiling.
Rows in tasks/s: higher is better, the target is a floor (aim: 1.2x); each is tasks over the
whole-process wall time from starting the submitting process until every result is back,
worker concurrency 2, one private RabbitMQ, medians of {runs} interleaved runs. Stock Celery
runs with its default settings and, in the last two columns, with celeryd's reliable settings
(acks_late, reject_on_worker_lost, prefetch 1, confirm_publish). The worker.send_events row
compares celeryd with itself: its reference is a celeryd worker with events off (the default)."""


def amount(value, unit):
    if unit == "tasks/s":
        return f"{value:,.0f} {unit}"
    return f"{value:.3f} {unit}" if unit == "s" else f"{value:.1f} {unit}"


def table(rows):
    """Markdown table of Rows, lower-is-better and higher-is-better alike."""
    lines = ["| measure | better | celeryd | stock Celery | ratio | target | "
             "stock, celeryd's settings | ratio |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = row.ours / row.reference
        if row.better == "lower":
            met = ratio <= row.target
            limit = (f"<= {row.target:.2f}x" if row.unit != "MiB"
                     else f"<= {row.target * row.reference:.0f} {row.unit}")
        else:
            met = ratio >= row.target
            limit = f">= {row.target:.2f}x"
        reliable = "- | -"
        if row.reliable:
            reliable = f"{amount(row.reliable, row.unit)} | {row.ours / row.reliable:.2f}x"
        lines.append(f"| {row.name} | {row.better} | {amount(row.ours, row.unit)} | "
                     f"{amount(row.reference, row.unit)} | {ratio:.2f}x | "
                     f"{limit} ({'met' if met else 'MISSED'}) | {reliable} |")
    return "\n".join(lines)


def scaling_table(rows):
    """Markdown table of scaling_rows: tasks/s of the batch path by concurrency and payload."""
    lines = ["| worker concurrency | payload | tasks | celery-submit --batch | "
             "stock Celery, defaults | ratio |", "|---|---|---|---|---|---|"]
    for concurrency, payload, count, ours, stock in rows:
        lines.append(f"| {concurrency} | {payload} | {count:,} | {ours:,.0f} tasks/s | "
                     f"{stock:,.0f} tasks/s | {ours / stock:.2f}x |")
    return "\n".join(lines)


def load():
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def events_only(count=2_000, runs=THROUGHPUT_RUNS):
    """The events row alone, on a private RabbitMQ of its own; print it as a table."""
    tmp = Path(tempfile.mkdtemp(prefix="celeryd-bench-events-"))
    node = RabbitMQ(tmp / "rabbitmq")
    try:
        node.start()
        rows = events_rows(node, tmp, count, runs)
    finally:
        node.close()
    print(f"{count:,} tasks, medians of {runs} runs, load average {load()}\n\n{table(rows)}")


def main():
    if sys.argv[1:2] == ["events"]:
        return events_only(*(int(arg) for arg in sys.argv[2:4]))
    cold_only = sys.argv[1:2] == ["cold"]  # the cold rows alone (a minute, not twenty)
    # As installed, where py3compile writes the bytecode: with a stale or missing __pycache__
    # (PYTHONDONTWRITEBYTECODE=1 in the caller's environment, or a source edited since) every
    # cold run compiles celeryd_pkg from source: +60M instructions, +29% on celery-submit.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "celeryd_pkg")], check=True)
    load_before = load()
    tmp = Path(tempfile.mkdtemp(prefix="celeryd-bench-"))
    node = RabbitMQ(tmp / "rabbitmq")
    account = {"user": "bench", "password": "bench-password", "vhost": "bench"}
    try:
        node.start()
        node.add_account(account["user"], account["password"], account["vhost"])
        config = write_config(tmp / "etc", node, account)
        url = f"amqp://bench:bench-password@127.0.0.1:{node.port}/bench"
        seed_client = tmp / "seed_client.py"
        seed_client.write_text(SEED_CLIENT.format(url=url))
        app_dir = tmp / "app"
        app_dir.mkdir()
        (app_dir / "seedapp.py").write_text(SEED_APP.format(url=url))
        env = clean_env()
        rows = worker_rows(config, app_dir, env, tmp)
        worker = celeryd_worker(config, tmp)
        try:
            rows = submit_rows(config, seed_client, env) + rows
        finally:
            worker.close()
        if not cold_only:
            rows += throughput_rows(node, tmp)
            rows += events_rows(node, tmp)
        scaling = [] if cold_only else scaling_rows(node, tmp)
    finally:
        node.close()
    result = (f"celeryd benchmark, {time.strftime('%Y-%m-%d %H:%M')}, medians of {RUNS} runs "
              f"(cold rows) and {THROUGHPUT_RUNS} runs (throughput), python "
              f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load_before} "
              f"before and {load()} after\n\n{TABLE_NOTE.format(runs=THROUGHPUT_RUNS)}\n\n"
              f"{table(rows)}\n")
    if scaling:
        result += (f"\nScaling of the batch path: an echo task with a string argument of the "
                   f"payload's size, submit to all results back, medians of "
                   f"{THROUGHPUT_RUNS}.\n\n{scaling_table(scaling)}\n")
    out = REPO / "build" / "bench.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(result)
    print(result)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
