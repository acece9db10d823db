#!/usr/bin/python3
"""The VM side of tests/system/test_vm.py: runs as root in the booted VM (celeryd-vmtest.service).

It drives celeryd as an operator would (conf.d drop-in, daemon-reload, restart, celery-submit),
records what it saw in /mnt/out/results.json (rewritten after every phase, so a hang still
leaves the phases before it) and each phase's journal in /mnt/out/journal-PHASE.txt; the host
asserts on them. It asserts nothing itself: a phase that raises is recorded under "errors".
"""

import json
import os
import socket
import subprocess
import threading
import time
import traceback

OUT = '/mnt/out'
TARGET, PORT = '10.99.0.1', 8080  # an address on the guest's lo, a plain accepting listener
CONF = '/etc/celeryd/conf.d/50-vmtest.yaml'
UNIT = 'celery-worker'
VHOST, QUEUE = 'celery', 'celery'  # the defaults a fresh install provisions
HOG_MIB, MEMORY_MAX = 600, '250M'
CHILD_LIMIT_KIB, GROW_MIB = 150000, 250
BOOT_DEADLINE = 360  # s of uptime for the broker and the worker to come up
results = {'errors': {}, 'phases': []}


def uptime():
    with open('/proc/uptime') as f:
        return float(f.read().split()[0])


def log(message):
    print(f'vmtest [{uptime():7.1f}] {message}', flush=True)


def save():
    with open(f'{OUT}/results.json.new', 'w') as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(f'{OUT}/results.json.new', f'{OUT}/results.json')


def sh(*cmd, timeout=90):
    """Run cmd; return {cmd, rc, out, err, secs}, rc 'timeout' when it did not end in time."""
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as expired:
        rc, out, err = 'timeout', str(expired.stdout or ''), str(expired.stderr or '')
    record = {'cmd': ' '.join(cmd), 'rc': rc, 'out': out.strip(), 'err': err.strip(),
              'secs': round(time.monotonic() - started, 2)}
    log(f'{record["cmd"]} -> rc={rc} out={record["out"][:200]!r} err={record["err"][:300]!r}')
    return record


def show(*props):
    """systemctl show UNIT -p ... as a dict."""
    out = sh('systemctl', 'show', UNIT, *[f'-p{prop}' for prop in props])['out']
    return dict(line.split('=', 1) for line in out.splitlines() if '=' in line)


def submit(task, *args, timeout=40):
    return sh('celery-submit', '--timeout', str(timeout), task, *map(str, args),
              timeout=timeout + 30)


def journal_cursor():
    out = subprocess.run(['journalctl', '-b', '-n1', '-q', '-ocat', '--show-cursor'],
                         capture_output=True, text=True).stdout
    return out.rsplit('-- cursor: ', 1)[-1].strip()


def save_journal(name, cursor):
    """Write the journal since cursor to journal-NAME.txt (monotonic timestamps)."""
    time.sleep(2)  # let journald catch up with the kernel and the worker's stdout
    proc = subprocess.run(['journalctl', '-b', '--no-pager', '-o', 'short-monotonic',
                           f'--after-cursor={cursor}'], capture_output=True, text=True)
    with open(f'{OUT}/journal-{name}.txt', 'w') as f:
        f.write(proc.stdout + proc.stderr)
    return proc.stdout


def wait_active(unit, deadline):
    """Poll `systemctl is-active` (cheap under emulation) until active; return the state."""
    while True:
        state = subprocess.run(['systemctl', 'is-active', unit], capture_output=True,
                               text=True).stdout.strip()
        if state == 'active' or uptime() > deadline:
            log(f'{unit}: {state}')
            return state
        time.sleep(1)


def worker_answers(deadline):
    """Wait until `celery-submit add 4 4` prints 8; return its last record."""
    wait_active(UNIT, deadline)
    while True:
        record = submit('add', 4, 4, timeout=20)
        if record['rc'] == 0 and record['out'] == '8' or uptime() > deadline:
            return record
        time.sleep(3)


def apply_conf(text):
    """The operator flow: conf.d drop-in, daemon-reload (the generator), restart, answer."""
    with open(CONF, 'w') as f:
        f.write(text)
    record = {'conf': text, 'daemon_reload': sh('systemctl', 'daemon-reload'),
              'restart': sh('systemctl', 'restart', UNIT, timeout=180)}
    record['answer'] = worker_answers(uptime() + 120)
    record['unit'] = sh('systemctl', 'cat', UNIT)['out']
    return record


def outside_udp():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b'celeryd-vm', (TARGET, 9))
        return 'sent'
    except OSError as error:
        return repr(error)


def outside_connect():
    try:
        with socket.create_connection((TARGET, PORT), timeout=5):
            return 'connected'
    except OSError as error:
        return repr(error)


def listen():
    """A plain listener on TARGET:PORT that accepts and closes every connection."""
    server = socket.create_server((TARGET, PORT), reuse_port=True)
    while True:
        server.accept()[0].close()


def phase(function):
    name = function.__name__
    log(f'=== phase {name}')
    results['phases'].append(name)
    record = results[name] = {'started': uptime()}
    cursor = journal_cursor()
    try:
        function(record)
    except Exception:  # noqa: BLE001 - recorded for the host, and the next phase still runs
        results['errors'][name] = traceback.format_exc()
        log(results['errors'][name])
    record['journal'] = len(save_journal(name, cursor).splitlines())
    record['ended'] = uptime()
    save()


def boot(record):
    record['kernel'] = os.uname().release
    record['cgroup_fs'] = sh('stat', '-fc', '%T', '/sys/fs/cgroup')['out']
    with open('/sys/fs/cgroup/cgroup.controllers') as f:
        record['controllers'] = f.read().split()
    record['lo'] = sh('ip', 'addr', 'add', f'{TARGET}/32', 'dev', 'lo')
    threading.Thread(target=listen, daemon=True).start()
    wait_active('rabbitmq-server', BOOT_DEADLINE)
    record['answer'] = worker_answers(BOOT_DEADLINE)
    record['ready'] = uptime()  # the worker answered (the units' times are below)
    for unit in ('rabbitmq-server', 'celeryd-provision', UNIT):
        record[unit] = sh('systemctl', 'show', unit, '-pActiveState', '-pResult',
                          '-pActiveEnterTimestampMonotonic')['out']
    record['free'] = sh('free', '-m')['out']


def refusal(record):
    """As installed: IPAddressDeny=any, IPAddressAllow=localhost (and the broker)."""
    record['show'] = show('IPAddressDeny', 'IPAddressAllow')
    record['udp'] = submit('vmtasks.udp', TARGET, 9)
    record['tcp'] = submit('vmtasks.connect', TARGET, PORT, 5)
    record['outside_udp'], record['outside_tcp'] = outside_udp(), outside_connect()


def switch(record):
    """worker.outbound: [TARGET], then [any]."""
    for name, value in (('address', f'[{TARGET}]'), ('any', '[any]')):
        step = record[name] = apply_conf(f'worker:\n  outbound: {value}\n')
        step['show'] = show('IPAddressDeny', 'IPAddressAllow')
        step['udp'] = submit('vmtasks.udp', TARGET, 9)
        step['tcp'] = submit('vmtasks.connect', TARGET, PORT, 5)
        step['check'] = sh('celeryd-admin', 'check', timeout=120)


def memory(record):
    """worker.memory_max: a task far past it loses its child; the worker serves on."""
    record.update(apply_conf(f'worker:\n  concurrency: 2\n  memory_max: {MEMORY_MAX}\n'))
    props = ('MemoryMax', 'OOMPolicy', 'MainPID', 'NRestarts', 'ActiveState', 'SubState')
    record['before'] = show(*props)
    record['hog'] = sh('celery-submit', '--no-wait', 'vmtasks.hog', str(HOG_MIB))
    cursor, record['adds'], deadline = journal_cursor(), [], uptime() + 200
    while uptime() < deadline:
        time.sleep(2)
        record['adds'].append(dict(submit('add', 4, 4, timeout=30), at=uptime()))
        lines = subprocess.run(['journalctl', '-b', '-u', f'{UNIT}.service', '-ocat',
                                f'--after-cursor={cursor}'], capture_output=True,
                               text=True).stdout
        lost = lines.count('lost its worker process')
        record['adds'][-1]['lost_so_far'] = lost
        # Three losses (the last moves the message to celeryd.dead), then two more answers.
        if len([add for add in record['adds'] if add['lost_so_far'] >= 3]) >= 2:
            break
    record['after'] = show(*props)
    record['dead_list'] = sh('celeryd-admin', 'dead', 'list', timeout=120)


def max_memory_per_child(record):
    """worker.max_memory_per_child: a child whose task grew it past the limit is replaced."""
    hog = results.get('memory', {})
    if hog.get('hog', {}).get('out', '?') not in hog.get('dead_list', {}).get('out', ''):
        # Not in celeryd.dead: the hog may be redelivered still, and without memory_max it
        # would take the whole VM. Drop it (rabbitmqctl costs ~20 s under emulation).
        record['stop'] = sh('systemctl', 'stop', UNIT, timeout=180)
        record['purge'] = sh('rabbitmqctl', 'purge_queue', '-p', VHOST, QUEUE, timeout=120)
    record.update(apply_conf(f'worker:\n  concurrency: 1\n'
                             f'  max_memory_per_child: {CHILD_LIMIT_KIB}\n'))
    record['main_before'] = show('MainPID')['MainPID']
    record['pids_before'] = [submit('vmtasks.pid') for _ in range(2)]
    record['grow'] = submit('vmtasks.grow', GROW_MIB)
    time.sleep(3)
    record['pids_after'] = [submit('vmtasks.pid') for _ in range(2)]
    record['main_after'] = show('MainPID')['MainPID']


def main():
    os.makedirs(OUT, exist_ok=True)
    log('start')
    for function in (boot, refusal, switch, memory, max_memory_per_child):
        phase(function)
        if function is boot and results['boot'].get('answer', {}).get('out') != '8':
            break  # no worker: nothing else can be shown
    with open(f'{OUT}/journal.txt', 'w') as f:
        f.write(subprocess.run(['journalctl', '-b', '--no-pager', '-o', 'short-monotonic'],
                               capture_output=True, text=True).stdout)
    results['done'] = uptime()
    save()
    os.sync()
    log('done')


if __name__ == '__main__':
    main()
