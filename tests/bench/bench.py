"""`make bench`: celeryd against stock Celery, measured in the same run, as a table of ratios.

Rows: celery-submit's cold start (wall time and max RSS of the whole process) against a
seed-style client (`from celery import Celery`, rpc backend, `send_task(...).get()`), and
worker start to READY=1 against stock `celery worker` start to "ready.".
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

PYTHON = "/usr/bin/python3"
RUNS = int(os.environ.get("BENCH_RUNS", "15"))

SEED_CLIENT = """\
from celery import Celery
app = Celery("tasks", broker={url!r}, backend="rpc://")
print(app.send_task("celeryd.add", (4, 4)).get(timeout=30))
"""

# What /usr/bin/celery-submit runs once installed (the console_scripts wrapper).
ENTRY_POINT = "import sys; from celeryd_pkg.submit import main; sys.exit(main())"

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
    return [("celery-submit add 4 4, cold, wall", wall[0], wall[1], "s", 0.5),
            # The design's RSS target is absolute: 20 MiB.
            ("celery-submit add 4 4, max RSS", rss[0], rss[1], "MiB", 20 / rss[1])]


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
    return [("worker start to READY=1 vs stock 'ready.'", statistics.median(ours),
             statistics.median(reference), "s", 0.5)]


def table(rows):
    lines = ["| measure | celeryd | stock Celery | ratio | target |", "|---|---|---|---|---|"]
    for name, ours, reference, unit, target in rows:
        ratio = ours / reference
        verdict = "met" if ratio <= target else "MISSED"
        limit = f"<= {target:.2f}x" if unit == "s" else f"<= {target * reference:.0f} {unit}"
        lines.append(f"| {name} | {ours:.3f} {unit} | {reference:.3f} {unit} | {ratio:.2f}x | "
                     f"{limit} ({verdict}) |")
    return "\n".join(lines)


def main():
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
        worker = WorkerProcess(config, tmp)
        try:
            worker.wait_for("READY=1")
            rows = submit_rows(config, seed_client, env) + rows
        finally:
            worker.close()
    finally:
        node.close()
    result = (f"celeryd benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {RUNS} runs, medians, "
              f"python {sys.version.split()[0]}\n\n{table(rows)}\n")
    out = REPO / "build" / "bench.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(result)
    print(result)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
