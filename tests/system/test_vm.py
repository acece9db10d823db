"""Issue 13, parts 3 and 4, proven where systemd enforces them: a real Debian 13 VM.

This machine's containers run on the legacy cgroup hierarchy, where IPAddressDeny=,
MemoryMax= and OOMPolicy= are not enforced, so these proofs boot Debian's own kernel under
qemu (pure cgroup v2), once per session, and run all of them in it (tests/system/vm.py).

    Given a VM with rabbitmq-server and the three debs installed, the operator's task module
          vmtasks (tasks.modules: [vmtasks]) and a listener on 10.99.0.1:8080 (an address on lo)
    When  a task sends UDP to 10.99.0.1 / connects to 10.99.0.1:8080, as installed
    Then  the send fails with EPERM and the connect times out, while the same from a plain
          shell succeeds
    When  conf.d says worker.outbound: [10.99.0.1] (then [any]), daemon-reload, restart
    Then  both succeed and `celeryd-admin check` names 10.99.0.1
    When  conf.d says worker.memory_max: 250M and a task allocates 600 MiB
    Then  the kernel OOM-kills its pool child only: same MainPID, NRestarts=0, add 4 4 keeps
          answering 8, and the journal has the kernel's, systemd's and the worker's lines,
          the last naming vmtasks.hog; after its last delivery it sits in celeryd.dead
    When  conf.d says worker.max_memory_per_child: 150000 and a task grows its child past it
    Then  that child is replaced once the task ends, the main process stays
"""

import json
import os
import re
import shutil

import pytest

from tests.system import harness, vm

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
KEEP = os.path.join(REPO, 'build', 'vm')  # the last run's results, journals and serial log
TARGET = '10.99.0.1'
TASKS_CONF = 'tasks:\n  modules: [vmtasks]\n  pythonpath: [/srv/vmtasks]\n'
MAX_REDELIVERIES = 3  # tasks.max_redeliveries' default
QEMU_TIMEOUT = 600  # s: a hang fails the session's VM tests instead of stalling CI
TAIL = 80


def _read(name):
    with open(os.path.join(HERE, name)) as f:
        return f.read()


class Run:
    """What one VM run left: results.json, the journals, the serial console, the timings."""

    def __init__(self, machine):
        self.exit_code, self.timings, self.current = machine.exit_code, machine.timings, None
        self.max_rss_mib = machine.max_rss_kib // 1024
        self.serial = machine.serial()
        text = machine.output('results.json')
        self.results = json.loads(text) if text else None
        self.journals = {name[len('journal-'):-len('.txt')]: machine.output(name)
                         for name in os.listdir(f'{machine.share}/out')
                         if name.startswith('journal-')}
        shutil.rmtree(KEEP, ignore_errors=True)
        shutil.copytree(f'{machine.share}/out', KEEP)
        with open(f'{KEEP}/serial.log', 'w') as f:
            f.write(self.serial)
        with open(f'{KEEP}/host.json', 'w') as f:
            json.dump({'exit_code': self.exit_code, 'timings': self.timings,
                       'qemu_max_rss_mib': self.max_rss_mib}, f, indent=1)

    def phase(self, name):
        """Return the guest's record of a phase; fail naming what the guest raised in it."""
        self.current = name
        if self.results is None:
            why = (f'qemu hit its {QEMU_TIMEOUT} s timeout' if self.exit_code == 124
                   else f'qemu exited {self.exit_code}')
            pytest.fail(f'the VM wrote no results ({why}; timings {self.timings}); serial '
                        f'console tail:\n{self.tail()}', pytrace=False)
        error = self.results['errors'].get(name)
        if error or name not in self.results:
            pytest.fail(f'VM phase {name} {"raised" if error else "did not run"}: {error or ""}'
                        f'\nphases run: {self.results["phases"]}', pytrace=False)
        return self.results[name]

    def journal(self, name):
        return self.journals.get(name) or ''

    def tail(self, lines=TAIL):
        return '\n'.join(self.serial.splitlines()[-lines:])


@pytest.fixture(scope='session')
def vm_run(debs):
    """Build the image (the kernel-bearing base is cached), boot one VM, run every proof in
    it, and return the Run. Fails, never skips, without qemu; removes the VM in all cases."""
    try:
        vm.check_prerequisites()
    except (vm.VmError, harness.HarnessError) as error:
        pytest.fail(str(error), pytrace=False)
    files = {'/srv/vmtasks/vmtasks.py': _read('vmtasks.py'),
             '/etc/celeryd/conf.d/10-vmtasks.yaml': TASKS_CONF}
    with vm.Vm(debs, files, {'guest.py': _read('vm_guest.py')}, timeout=QEMU_TIMEOUT) as machine:
        machine.build()
        machine.run()
        return Run(machine)


@pytest.fixture(autouse=True)
def _console_on_failure(request, vm_run):
    """A failed proof prints the serial console's tail and its phase's journal tail."""
    vm_run.current = None
    yield
    report = getattr(request.node, 'rep_call', None)
    if report is None or not report.failed:
        return
    capture = request.config.pluginmanager.getplugin('capturemanager')
    with capture.global_and_fixture_disabled():
        print(f'\n--- {request.node.nodeid}: serial console, last {TAIL} lines '
              f'(all of it, the results and the journals: {KEEP}) ---\n{vm_run.tail()}')
        if vm_run.current:
            lines = vm_run.journal(vm_run.current).splitlines()[-TAIL:]
            print(f'--- journal of phase {vm_run.current}, last {TAIL} lines ---\n'
                  + '\n'.join(lines))


def _ok(record, out):
    """Assert a command record exited 0 printing out."""
    assert (record['rc'], record['out']) == (0, out), record


def _failed_with(record, *words):
    """Assert a celery-submit record failed (exit 1, the task raised) naming one of words."""
    assert record['rc'] == 1 and any(word in record['err'] for word in words), record


def test_vm_runs_systemd_on_cgroup_v2_and_the_installed_worker_answers(vm_run):
    boot = vm_run.phase('boot')
    assert boot['cgroup_fs'] == 'cgroup2fs'
    assert {'memory', 'cpu', 'pids'} <= set(boot['controllers'])
    _ok(boot['answer'], '8')


def test_by_default_a_task_cannot_reach_another_address(vm_run):
    refusal = vm_run.phase('refusal')
    deny, allow = refusal['show']['IPAddressDeny'], refusal['show']['IPAddressAllow']
    assert '0.0.0.0/0' in deny and TARGET not in allow, refusal['show']
    # The unit's filter drops the packets: EPERM for a UDP send, a TCP connect times out...
    _failed_with(refusal['udp'], 'PermissionError', 'Operation not permitted')
    _failed_with(refusal['tcp'], 'TimeoutError', 'timed out')
    # ...while the same from outside the unit gets through.
    assert (refusal['outside_udp'], refusal['outside_tcp']) == ('sent', 'connected')


def test_worker_outbound_address_opens_it_after_daemon_reload_and_restart(vm_run):
    step = vm_run.phase('switch')['address']
    assert step['restart']['rc'] == 0, step['restart']
    _ok(step['answer'], '8')
    assert TARGET in step['show']['IPAddressAllow'], step['show']
    _ok(step['udp'], 'sent')
    _ok(step['tcp'], 'connected')
    check = step['check']['out'] + step['check']['err']
    assert TARGET in check, step['check']


def test_worker_outbound_any_opens_everything(vm_run):
    step = vm_run.phase('switch')['any']
    assert step['restart']['rc'] == 0, step['restart']
    _ok(step['udp'], 'sent')
    _ok(step['tcp'], 'connected')


def test_memory_max_oom_kills_only_the_child_and_the_worker_serves_on(vm_run):
    memory = vm_run.phase('memory')
    before, after = memory['before'], memory['after']
    assert (before['MemoryMax'], before['OOMPolicy']) == (str(250 << 20), 'continue'), before
    assert memory['hog']['rc'] == 0, memory['hog']
    losses = [add['lost_so_far'] for add in memory['adds']]
    assert losses and max(losses) >= 1, f'the hog never lost its child: {memory["adds"]}'
    assert (after['ActiveState'], after['MainPID'], after['NRestarts']) == \
        ('active', before['MainPID'], '0'), (before, after)
    answers = [(add['rc'], add['out']) for add in memory['adds']]
    assert len(answers) >= 3 and set(answers) == {(0, '8')}, memory['adds']
    assert any(loss >= 1 for loss in losses[:-1]), 'no add after the first loss'


def test_the_journal_says_the_kernel_killed_the_child_of_task_vmtasks_hog(vm_run):
    hog_id = vm_run.phase('memory')['hog']['out']
    journal = vm_run.journal('memory')
    assert re.search(r'Memory cgroup out of memory: Killed process \d+', journal)
    assert re.search(r'celery-worker\.service: A process of this unit has been killed by the '
                     r'OOM killer', journal)
    assert re.search(rf'Task vmtasks\.hog\[{re.escape(hog_id)}\] lost its worker process',
                     journal), f'no worker line naming vmtasks.hog[{hog_id}]'


def test_the_hog_is_not_delivered_a_fourth_time_and_lands_in_celeryd_dead(vm_run):
    memory = vm_run.phase('memory')
    hog_id = memory['hog']['out']
    lost = re.findall(rf'Task vmtasks\.hog\[{re.escape(hog_id)}\] lost its worker process.*',
                      vm_run.journal('memory'))
    assert len(lost) == MAX_REDELIVERIES, lost
    assert 'celeryd.dead' in lost[-1], lost
    assert memory['dead_list']['rc'] == 0 and hog_id in memory['dead_list']['out'], \
        memory['dead_list']


def test_max_memory_per_child_replaces_a_grown_child_not_the_worker(vm_run):
    record = vm_run.phase('max_memory_per_child')
    pids = [add['out'] for add in record['pids_before'] + [record['grow']] + record['pids_after']]
    assert all(add['rc'] == 0 for add in record['pids_before'] + record['pids_after']), record
    assert record['grow']['rc'] == 0, record['grow']
    # concurrency 1: one child ran them all until grow took it past the limit
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4], pids
    assert record['main_before'] == record['main_after'], record
