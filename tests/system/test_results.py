"""Results you can come back to, on one booted machine per suite: `celeryd-admin store-setup`.

    Given a booted <suite> machine with rabbitmq-server, redis-server (holding a key of the
          operator's) and the three debs installed, the worker running
    When  the admin runs `celeryd-admin store-setup`
    Then  `celery-submit add 4 4 --no-wait` prints an id and `celery-submit result ID`, another
          process, prints 8, also after `systemctl restart redis-server`
    And   the operator's key is kept, the ACL file holds no password, `ACL LOG` stays empty
    And   a second run changes nothing; `check` logs in to the store
    And   a result is gone after results.expires
    And   a host joined with a string from `provision --for-host` reads results with its own
          login, which `deprovision --user` takes away
    And   `store-setup --remove` leaves redis-server running on its own config, and so does
          purging celeryd

    | suite    |
    | trixie   |
    | bookworm |

The steps share one machine (module scope) and run in file order.
"""

import json
import re

import pytest

from tests.system import harness
from tests.system.conftest import _print_on_failure
from tests.system.test_install import assert_active

CREDENTIALS = "/etc/celeryd/credentials"
ACLFILE, ADMIN_PASSWORD = "/etc/celeryd/redis/users.acl", "/etc/celeryd/redis/admin-password"
DROPIN = "/etc/systemd/system/redis-server.service.d/celeryd.conf"
CONF_D = "/etc/celeryd/conf.d/20-results.yaml"
# Runs inside the machine: one redis command as the admin (password read from its file, so it
# is never in argv) or as this host's account (from the credentials file), printed as JSON.
AS_ACCOUNT = """
import json, sys, redis
who, *command = sys.argv[1:]
if who == "admin":
    user, password = "default", open("/etc/celeryd/redis/admin-password").read().strip()
else:
    text = "".join(line for line in open("/etc/celeryd/credentials") if line[:1] != "#")
    user, password = [json.loads(text)["results"][k] for k in ("user", "password")]
client = redis.Redis(host="127.0.0.1", username=user, password=password, decode_responses=True)
try:
    print(json.dumps(client.execute_command(*command), default=str))
except redis.exceptions.ResponseError as error:  # python3-redis 4.3 has no NoPermissionError
    denied = type(error).__name__ == "NoPermissionError" or str(error).startswith("NOPERM")
    print(json.dumps({"error": "NOPERM" if denied else str(error)}))
"""


@pytest.fixture(scope="module", params=harness.SUITES, ids=harness.SUITES)
def machine(request, prerequisites, debs):
    """A booted machine of the suite with the debs in /root/debs and everything for an offline
    install of rabbitmq-server and redis-server cached."""
    with harness.Container(request.param) as container:
        container.prepare(debs, ["rabbitmq-server", "redis-server"])
        container.boot()
        yield container


@pytest.fixture(autouse=True)
def journal_on_failure(request, machine):
    yield
    _print_on_failure(request, machine)


def show(machine, prop, unit):
    return machine.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()


def redis_as(machine, who, *command):
    """Run one redis command on the store as who ("admin" or "account"); return its answer."""
    done = machine.run(["python3", "-c", AS_ACCOUNT, who, *command], timeout=60)
    return json.loads(done.stdout)


def store_setup(machine, *args):
    done = machine.run(["celeryd-admin", "store-setup", *args], check=False, timeout=300)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout + done.stderr
    assert done.stdout.count("\n") == 1  # one summary line
    return done.stdout


def files_of_the_store(machine):
    paths = [ACLFILE, ADMIN_PASSWORD, DROPIN, CREDENTIALS, CONF_D]
    return machine.run(["sha256sum", *paths]).stdout


def secrets_of(machine):
    admin = machine.run(["cat", ADMIN_PASSWORD]).stdout.strip()
    login = json.loads(re.sub(r"(?m)^#.*\n", "", machine.run(["cat", CREDENTIALS]).stdout))
    return admin, login["results"]["password"]


def test_install_the_broker_the_store_and_celeryd(machine):
    machine.run(["apt-get", "install", "--no-download", "-y", "rabbitmq-server", "redis-server"],
                timeout=600)
    machine.run(f"cd {machine.deb_dir} && apt-get install -y ./*.deb", timeout=600)
    for unit in ("rabbitmq-server", "redis-server", "celery-worker"):
        assert_active(machine, unit)
    # Data of the operator's own, before the store: turning the append-only file on by a
    # restart alone would lose it.
    assert machine.run(["redis-cli", "SET", "operator-key", "kept"]).stdout == "OK\n"


def test_store_setup_makes_the_store_and_results_come_back_from_another_process(machine):
    out = store_setup(machine)
    assert out.startswith("celeryd-admin: result store ready (redis-server port 6379, account "
                          "'celery'): ")
    for unit in ("redis-server", "celery-worker"):
        assert_active(machine, unit)
    task_id = machine.run(["celery-submit", "add", "4", "4", "--no-wait"]).stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id)
    looked_up = machine.run(["celery-submit", "result", task_id, "--wait", "30"], check=False)
    assert (looked_up.returncode, looked_up.stdout, looked_up.stderr) == (0, "8\n", "")
    assert redis_as(machine, "admin", "GET", "operator-key") == "kept"
    machine.task_id = task_id


def test_the_files_hold_no_password_and_only_their_owners_read_them(machine):
    admin, login = secrets_of(machine)
    for path in (ACLFILE, DROPIN, CONF_D):
        for secret in (admin, login):
            assert machine.run(["grep", "-qF", "-e", secret, path], check=False).returncode == 1
    owners = machine.run(["stat", "-c", "%n %U:%G %a", ACLFILE, ADMIN_PASSWORD, CREDENTIALS,
                          DROPIN, CONF_D]).stdout.splitlines()
    assert owners == [f"{ACLFILE} root:redis 640", f"{ADMIN_PASSWORD} root:root 600",
                      f"{CREDENTIALS} root:celery 640", f"{DROPIN} root:root 644",
                      f"{CONF_D} root:root 644"]


def test_a_result_survives_a_restart_of_the_store(machine):
    machine.run(["systemctl", "restart", "redis-server"], timeout=120)
    assert_active(machine, "redis-server")
    looked_up = machine.run(["celery-submit", "result", machine.task_id], check=False)
    assert (looked_up.returncode, looked_up.stdout) == (0, "8\n"), looked_up.stderr


def test_a_second_run_changes_nothing(machine):
    before = files_of_the_store(machine)
    pids = [show(machine, "MainPID", unit) for unit in ("redis-server", "celery-worker")]
    out = store_setup(machine)
    assert out == ("celeryd-admin: result store already set up (redis-server port 6379, "
                   "account 'celery'); nothing changed\n")
    assert files_of_the_store(machine) == before
    assert [show(machine, "MainPID", unit) for unit in ("redis-server", "celery-worker")] == pids


def test_check_logs_in_to_the_store(machine):
    check = machine.run(["celeryd-admin", "check"], check=False, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK   store: logged in at redis://celery:***@localhost:6379/0\n" in check.stdout


def test_the_account_did_nothing_its_acl_refused_and_reaches_nothing_else(machine):
    assert redis_as(machine, "admin", "ACL", "LOG") == []
    assert redis_as(machine, "account", "GET", "operator-key") == {"error": "NOPERM"}
    assert redis_as(machine, "account", "FLUSHALL") == {"error": "NOPERM"}
    assert redis_as(machine, "admin", "DBSIZE") >= 2  # the result and the operator's key
    redis_as(machine, "admin", "ACL", "LOG", "RESET")  # the two refusals just made


def test_after_tls_setup_the_store_listens_with_tls_on_6380_too(machine):
    machine.run(["celeryd-admin", "tls-setup", "--name", "localhost"], timeout=300)
    out = store_setup(machine)
    assert out.startswith("celeryd-admin: result store ready (redis-server port 6379 and TLS "
                          "port 6380, account 'celery'): wrote /etc/celeryd/redis/server.pem; ")
    assert_active(machine, "redis-server")
    # redis-server (group redis, PrivateUsers=) reads its copy of the key, and a client that
    # verifies the certificate with tls-setup's CA logs in over TLS.
    over_tls = AS_ACCOUNT.replace('host="127.0.0.1"', 'host="localhost", port=6380, ssl=True, '
                                  'ssl_ca_certs="/etc/celeryd/tls/ca.pem"')
    done = machine.run(["python3", "-c", over_tls, "account", "PING"], timeout=60)
    assert json.loads(done.stdout) is True
    # This host's worker still stores on the plain port (results.tls follows broker.tls).
    task_id = machine.run(["celery-submit", "add", "2", "3", "--no-wait"]).stdout.strip()
    looked_up = machine.run(["celery-submit", "result", task_id, "--wait", "30"], check=False)
    assert (looked_up.returncode, looked_up.stdout) == (0, "5\n"), looked_up.stderr
    assert redis_as(machine, "admin", "ACL", "LOG") == []


def test_a_result_is_gone_after_results_expires(machine):
    machine.run("printf 'results:\\n  expires: 3\\n' >/etc/celeryd/conf.d/30-expires.yaml")
    harness.restart_worker(machine)
    task_id = machine.run(["celery-submit", "add", "3", "3", "--no-wait"]).stdout.strip()
    kept = machine.run(["celery-submit", "result", task_id, "--wait", "30"], check=False)
    assert (kept.returncode, kept.stdout) == (0, "6\n"), kept.stderr
    gone = harness.wait_until(
        lambda: (done := machine.run(["celery-submit", "result", task_id], check=False))
        .returncode == 6 and done, 20, "the result to expire")
    assert gone.stderr == (f"celery-submit: no result for {task_id} (not done yet, older than "
                           f"results.expires, or never sent)\n")
    machine.run(["rm", "/etc/celeryd/conf.d/30-expires.yaml"])
    harness.restart_worker(machine)


def test_a_joined_host_takes_its_store_login_from_the_join_string(machine):
    # Another host, played by a second config root: join writes its credentials, CA and
    # results.backend there; its celery-submit then reaches the store over TLS with that login.
    join_string = machine.run(["celeryd-admin", "provision", "--for-host", "web1", "--role",
                               "client", "--broker-host", "localhost"], timeout=120).stdout
    assert "results=" in join_string
    web1 = ["env", "CELERYD_ROOT=/srv/web1"]
    machine.run(["mkdir", "-p", "/srv/web1/etc/celeryd"])
    joined = machine.run([*web1, "celeryd-admin", "join", "-", "--group", "root"],
                         input=join_string, timeout=120)
    assert joined.stdout == ("joined amqps://client-web1:***@localhost:5671/celery with results "
                             "kept in the result store there; check with: celeryd-admin check\n")
    assert joined.stderr == ""
    looked_up = machine.run([*web1, "celery-submit", "result", machine.task_id], check=False)
    assert (looked_up.returncode, looked_up.stdout) == (0, "8\n"), looked_up.stderr
    waited = machine.run([*web1, "celery-submit", "add", "1", "2"], check=False, timeout=120)
    assert (waited.returncode, waited.stdout) == (0, "3\n"), waited.stderr
    check = machine.run([*web1, "celeryd-admin", "check"], check=False, timeout=120)
    assert "OK   store: logged in at rediss://client-web1:***@localhost:6380/0\n" in check.stdout
    secret = account_password(machine, "/srv/web1/etc/celeryd/credentials")
    assert machine.run(["grep", "-qF", "-e", secret, ACLFILE], check=False).returncode == 1
    # A client's account reads results and writes nothing.
    assert redis_as(machine, "admin", "ACL", "LOG") == []
    # Its accounts go on the broker host; that host's own login stays.
    machine.run(["celeryd-admin", "deprovision", "--user", "client-web1"], timeout=120)
    assert "client-web1" not in machine.run(["cat", ACLFILE]).stdout
    assert machine.run(["celery-submit", "add", "2", "2"]).stdout == "4\n"
    gone = machine.run([*web1, "celery-submit", "result", machine.task_id], check=False)
    assert gone.returncode == 5, gone.stdout + gone.stderr


def account_password(machine, path):
    text = re.sub(r"(?m)^#.*\n", "", machine.run(["cat", path]).stdout)
    return json.loads(text)["results"]["password"]


def test_remove_leaves_redis_server_running_on_its_own_config(machine):
    out = store_setup(machine, "--remove")
    assert out.startswith("celeryd-admin: result store removed: ")
    assert_active(machine, "redis-server")
    for path in (DROPIN, "/etc/celeryd/redis", CONF_D):
        assert machine.run(["test", "-e", path], check=False).returncode == 1, path
    assert "results" not in machine.run(["cat", CREDENTIALS]).stdout
    # Debian's config again: no password, loopback, the operator's key still there.
    assert machine.run(["redis-cli", "GET", "operator-key"]).stdout == "kept\n"
    assert show(machine, "DropInPaths", "redis-server") == ""
    assert_active(machine, "celery-worker")
    assert machine.run(["celery-submit", "add", "4", "4"]).stdout == "8\n"
    looked_up = machine.run(["celery-submit", "result", machine.task_id], check=False)
    assert looked_up.returncode == 3  # results.backend: rpc again
    assert store_setup(machine, "--remove") == ("celeryd-admin: no result store set up here; "
                                                "nothing changed\n")


def test_purging_celeryd_puts_redis_server_back_on_its_own_config_first(machine):
    store_setup(machine)
    assert machine.run(["test", "-e", DROPIN], check=False).returncode == 0
    machine.run(["apt-get", "purge", "-y", "celeryd"], timeout=600)
    # With the drop-in but without its ACL file it would refuse to start.
    restart = machine.run(["systemctl", "restart", "redis-server"], check=False, timeout=120)
    assert restart.returncode == 0, restart.stderr
    assert_active(machine, "redis-server")
    for path in (DROPIN, "/etc/celeryd"):
        assert machine.run(["test", "-e", path], check=False).returncode == 1, path
    assert show(machine, "DropInPaths", "redis-server") == ""
    assert machine.run(["redis-cli", "GET", "operator-key"]).stdout == "kept\n"
