"""Bad input at the worker (issue 7, promise 3): a malformed drop-in beside an otherwise
valid config and a reachable broker makes the worker refuse to start, exit 3, with one clear
line naming the file; it never falls back to defaults, never says READY=1, never logs in."""

import secrets
import time

import pytest

from tests.integration.conftest import write_config

pytestmark = pytest.mark.integration

MALFORMED = {
    "yaml syntax": "worker:\n  concurrency: [2\n",
    "unknown key": "worker:\n  concurency: 2\n",
    "wrong type": "worker:\n  concurrency: two\n",
    "tab indent": "worker:\n\tconcurrency: 2\n",
    "not a mapping": "- worker\n- concurrency\n",
    "nul byte": "worker:\n  concurrency: 2\x00\n",
    "deep nesting": "worker: " + "[" * 3000 + "]" * 3000 + "\n",
    "not utf-8": "worker:\n  name: caf\xe9\n",
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_drop_in_makes_the_worker_refuse_to_start_with_one_line(
        tmp_path, rabbitmq, start_worker, kind):
    suffix = secrets.token_hex(3)
    account = {"user": f"bad-{suffix}", "vhost": f"bad-{suffix}",
               "password": secrets.token_urlsafe(16)}
    rabbitmq.add_account(account["user"], account["password"], account["vhost"])
    config = write_config(tmp_path / "etc", rabbitmq, account)
    dropin = config.parent / "conf.d" / "50-broken.yaml"
    dropin.parent.mkdir()
    dropin.write_bytes(MALFORMED[kind].encode("latin-1"))
    before = connections(rabbitmq, account)
    worker = start_worker(config, ready=False)
    deadline = time.monotonic() + 30
    while worker.proc.poll() is None and time.monotonic() < deadline:
        worker.receive(0.2)
    worker.receive(0.2)
    assert worker.proc.returncode == 3, worker.output()
    lines = [line for line in worker.output().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"celeryd: {dropin}"), lines
    assert "Traceback" not in worker.output()
    assert not any("READY=1" in m for m in worker.messages), worker.messages
    assert connections(rabbitmq, account) == before == 0
    # The same drop-in, fixed, starts the worker: the refusal was about the file alone.
    dropin.write_text("worker:\n  concurrency: 2\n")
    start_worker(config).stop()


def connections(rabbitmq, account):
    rows = rabbitmq.ctl("list_connections", "user").stdout.split()
    return rows.count(account["user"])
