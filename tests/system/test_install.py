"""Lifecycle, first step: install the three debs on a booted machine with a running broker.

    Given a booted <suite> machine with rabbitmq-server installed and running
    When  the admin runs `apt-get install ./*.deb` (python3-celeryd-pkg, celeryd, celery-submit)
    Then  celery-worker is active
    And   `celery-submit add 4 4` prints 8 and exits 0
    And   `celery-submit --batch -` with 1,000 lines prints 1,000 right results and exits 0

    | suite    |
    | trixie   |
    | bookworm |
"""

import json
import time


def assert_active(machine, unit, settle=30):
    """Assert unit is (or within settle seconds becomes) active; else print its status and log."""
    for _ in range(settle * 2):
        state = machine.run(['systemctl', 'is-active', unit], check=False).stdout.strip()
        if state != 'activating':
            break
        time.sleep(0.5)
    if state != 'active':
        status = machine.run(['systemctl', 'status', '--no-pager', '-l', unit], check=False)
        print(status.stdout + status.stderr)
        print(machine.journal(unit=unit, lines=100))
    assert state == 'active', f'{unit} is {state!r}'


def test_install_starts_the_worker_and_celery_submit_adds(booted):
    booted.run(['apt-get', 'install', '--no-download', '-y', 'rabbitmq-server'], timeout=600)
    assert_active(booted, 'rabbitmq-server')

    # No --no-download here: apt (2.6, 3.0) then fails on local .debs with "Internal Error,
    # Pathname to install is not absolute". The container has no route out anyway, so every
    # dependency comes from the cache filled before boot.
    booted.run(f'cd {booted.deb_dir} && apt-get install -y ./*.deb', timeout=600)
    assert_active(booted, 'celery-worker')

    submit = booted.run(['celery-submit', 'add', '4', '4'], check=False, timeout=60)
    assert (submit.returncode, submit.stdout.strip()) == (0, '8'), submit.stderr

    lines = "".join(json.dumps(["add", [n, n]]) + "\n" for n in range(1000))
    batch = booted.run(['celery-submit', '--batch', '-'], check=False, timeout=300, input=lines)
    assert batch.returncode == 0, batch.stderr
    outcomes = [json.loads(line) for line in batch.stdout.splitlines()]
    assert sorted((o["line"], o["state"], o["result"]) for o in outcomes) == [
        (n + 1, "SUCCESS", 2 * n) for n in range(1000)]
