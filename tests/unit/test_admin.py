"""Unit tests: celeryd-admin's arguments, join URLs, exit codes and check's lines."""

import io
import socket
import stat

import pytest

from celeryd_pkg import admin as module
from celeryd_pkg import check, credentials, dropin, provision, tls
from celeryd_pkg import config as config_module
from celeryd_pkg.errors import UsageError
from tests.unit.test_provision import FakeCtl

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def etc(tmp_path):
    """A config directory: (celeryd.yaml path, credentials path)."""
    directory = tmp_path / "etc"
    directory.mkdir()
    main = directory / "celeryd.yaml"
    main.write_text("# empty: defaults and credentials only\n")
    return main, directory / "credentials"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fake = FakeCtl(tmp_path / "fake")
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    return fake


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = module.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- argument handling ----------------------------------------------------------------------

def test_provision_defaults_are_user_celery_vhost_celery_group_celery():
    args = module.parse_args(["provision"])
    assert (args.user, args.vhost, args.group, args.rotate_password, args.defer_if_absent,
            args.config) == ("celery", "celery", "celery", False, False, None)


def test_rotate_password_is_provision_with_a_new_password():
    args = module.parse_args(["rotate-password", "--user", "u"])
    assert (args.command, args.rotate_password, args.user) == ("provision", True, "u")


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["provision", "--bogus"], ["join"], ["join", "a", "b"],
    ["provision", "--user="], ["provision", "--user=-rf"], ["deprovision", "--vhost=a b"],
    ["check", "extra"],
])
def test_bad_arguments_exit_2_with_one_line_and_no_traceback(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("celeryd-admin") and err.count("\n") == 1
    assert "Traceback" not in err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for command in ("provision", "rotate-password", "deprovision", "join", "check", "tls-setup",
                    "drain", "resume"):
        assert command in out


# --- join URLs ------------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("amqp://celery:pw@broker.example.org/celery",
     ("broker.example.org", 5672, "celery", "celery", "pw")),
    ("amqp://celery:pw@Broker.Example.ORG:5673/celery",
     ("broker.example.org", 5673, "celery", "celery", "pw")),
    ("AMQP://u%40x:p%2Fw%3A%40%25@10.0.0.5:1/v%20h", ("10.0.0.5", 1, "v h", "u@x", "p/w:@%")),
    ("amqp://u:pw@[2001:db8::1]:5672/%2F", ("2001:db8::1", 5672, "/", "u", "pw")),
    ("amqp://u:pw@[::1]/celery", ("::1", 5672, "celery", "u", "pw")),
    ("  amqp://u:pw@h/v\n", ("h", 5672, "v", "u", "pw")),
])
def test_parse_url_accepts_join_strings(url, expected):
    broker = module.parse_url(url)
    assert tuple(broker[k] for k in ("host", "port", "vhost", "user", "password")) == expected


@pytest.mark.parametrize("url, part", [
    ("", "no URL"),
    ("http://u:SECRET@h/v", "scheme"),
    ("u:SECRET@h/v", "scheme"),
    ("amqp://u:SECRET", "user"),
    ("amqp://:SECRET@h/v", "user"),
    ("amqp://u@h/v", "password"),
    ("amqp://u:@h/v", "password"),
    ("amqp://u:SECRET@/v", "host"),
    ("amqp://u:SECRET@h:0/v", "port"),
    ("amqp://u:SECRET@h:65536/v", "port"),
    ("amqp://u:SECRET@h:port/v", "port"),
    ("amqp://u:SECRET@[::1/v", "host"),
    ("amqp://u:SECRET@h", "vhost"),
    ("amqp://u:SECRET@h/", "vhost"),
    ("amqp://u:SECRET@h/a/b", "vhost"),
    ("amqp://u:SECRET@h/v?heartbeat=5", "parameter"),
    ("amqp://u:SECRET@h/v#x", "fragment"),
    ("amqp://u:SECRET@h/v?ca=MIIB", "amqps"),
    ("amqps://u:SECRET@h/v?ca=bm90IGEgY2VydGlmaWNhdGU", "ca"),
    ("amqps://u:SECRET@h/v?ca=%%%", "ca"),
    ("amqp://u:SEC RET@h/v", "whitespace"),
    ("amqp://u:SECRET@h!/v", "host"),
    ("amqp://u:SEC%0aRET@h/v", "password"),
])
def test_parse_url_rejects_bad_join_strings_naming_the_part_and_masking_the_password(url, part):
    with pytest.raises(UsageError) as error:
        module.parse_url(url)
    message = error.value.message
    assert error.value.exit_code == 2
    assert part in message and message.count("\n") == 0
    assert "SECRET" not in message and "SEC RET" not in message


def test_amqps_join_string_means_tls_on_port_5671_by_default():
    broker = module.parse_url("amqps://u:pw@broker.example.org/celery")
    assert (broker["tls"], broker["port"], "ca" in broker) == (True, 5671, False)
    assert module.parse_url("amqp://u:pw@h/v")["tls"] is False


def test_join_string_round_trips_with_the_ca_certificate(tmp_path):
    ca = tls.ca_files(tmp_path / "etc")
    tls.setup(ca, tmp_path / "rabbitmq", ["broker.example.org"], group="root")
    broker = {"host": "broker.example.org", "port": 5671, "vhost": "v h", "user": "worker-a",
              "password": "p/w:@%?&=", "tls": True}
    text = module.join_string(broker, ca.cert)
    assert text.startswith("amqps://worker-a:p%2Fw%3A%40%25%3F%26%3D@broker.example.org:5671/"
                           "v%20h?ca=")
    assert not any(c.isspace() for c in text)
    parsed = module.parse_url(text)
    assert parsed.pop("ca") == ca.cert.read_text()
    assert parsed == broker


@pytest.mark.parametrize("text, shown", [
    ("amqp://user:SECRET@host/vhost", "amqp://user:***@host/vhost"),
    ("amqp://user:SE@CR@ET@host:1/v", "amqp://user:***@host:1/v"),
    ("amqp://user:SECRET", "amqp://***"),
    ("amqp://host/vhost", "amqp://host/vhost"),
    ("user:SECRET@host", "user:***@host"),
    ("SECRET", "***"),
])
def test_mask_url_hides_everything_that_may_be_the_password(text, shown):
    assert module.mask_url(text) == shown


# --- join -----------------------------------------------------------------------------------

def test_join_from_stdin_writes_every_broker_key_and_prints_no_secret(
        capsys, monkeypatch, etc):
    main, creds = etc
    url = f"amqp://celery:{SECRET}%2F@broker.example.org/celery\n"
    code, out, err = run(capsys, "join", "-", "--config", str(main), "--group", "root",
                         stdin=url, monkeypatch=monkeypatch)
    assert code == 0
    assert err.startswith("celeryd-admin: warning: plain amqp:// to broker.example.org")
    assert err.count("\n") == 1 and SECRET not in err
    assert out == "joined amqp://celery:***@broker.example.org:5672/celery; " \
                  "check with: celeryd-admin check\n"
    assert credentials.read(creds) == {"host": "broker.example.org", "port": 5672,
                                       "vhost": "celery", "user": "celery",
                                       "password": SECRET + "/", "tls": False}
    assert stat.S_IMODE(creds.stat().st_mode) == 0o640


def test_join_allow_plain_is_silent_and_remembered(capsys, monkeypatch, etc):
    main, creds = etc
    code, out, err = run(capsys, "join", "-", "--allow-plain", "--config", str(main),
                         "--group", "root", stdin=f"amqp://u:{SECRET}@10.9.8.7/v",
                         monkeypatch=monkeypatch)
    assert (code, err) == (0, "")
    assert credentials.read(creds)["allow_plain"] is True
    assert config_module.load(str(main), env={}).plain_remote_warning() is None


def test_join_amqps_writes_the_ca_beside_the_config_and_turns_tls_on(capsys, monkeypatch, etc,
                                                                      tmp_path):
    main, creds = etc
    ca = tls.ca_files(tmp_path / "broker-etc")
    tls.setup(ca, tmp_path / "rabbitmq", ["10.9.8.7"], group="root")
    text = module.join_string({"host": "10.9.8.7", "port": 5671, "vhost": "celery",
                               "user": "worker-a", "password": SECRET, "tls": True}, ca.cert)
    code, out, err = run(capsys, "join", "-", "--config", str(main), "--group", "root",
                         stdin=text, monkeypatch=monkeypatch)
    assert (code, err) == (0, "")
    assert out.startswith("joined amqps://worker-a:***@10.9.8.7:5671/celery;")
    written = main.parent / "broker-ca.pem"
    assert written.read_text() == ca.cert.read_text()
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    loaded = config_module.load(str(main), env={})
    assert (loaded.broker.tls, loaded.broker.ca_file, loaded.broker.port) == (
        True, str(written), 5671)
    assert loaded.broker_url() == "amqps://worker-a:***@10.9.8.7:5671/celery"
    assert loaded.plain_remote_warning() is None


def test_join_lets_installed_worker_units_reach_the_broker(capsys, monkeypatch, etc, tmp_path):
    main, creds = etc
    root = tmp_path / "root"
    (root / "lib/systemd/system").mkdir(parents=True)
    (root / "lib/systemd/system/celery-worker.service").write_text("[Service]\n")
    (root / "lib/systemd/system/celery-worker@.service").write_text("[Service]\n")
    monkeypatch.setenv("CELERYD_ROOT", str(root))
    code, out, err = run(capsys, "join", "-", "--allow-plain", "--config", str(main),
                         "--group", "root", stdin=f"amqp://u:{SECRET}@10.9.8.7/v",
                         monkeypatch=monkeypatch)
    assert code == 0, err
    for unit in dropin.UNITS:
        text = (root / "etc/systemd/system" / f"{unit}.d" / dropin.DROPIN).read_text()
        assert "[Service]\nIPAddressAllow=10.9.8.7\n" in text


def test_join_to_an_unresolvable_host_exits_4_and_writes_nothing(capsys, monkeypatch, etc,
                                                                 tmp_path):
    main, creds = etc
    root = tmp_path / "root"
    (root / "lib/systemd/system").mkdir(parents=True)
    (root / "lib/systemd/system/celery-worker.service").write_text("[Service]\n")
    monkeypatch.setenv("CELERYD_ROOT", str(root))
    code, out, err = run(capsys, "join", "-", "--allow-plain", "--config", str(main),
                         "--group", "root", stdin=f"amqp://u:{SECRET}@no-such-host.invalid/v",
                         monkeypatch=monkeypatch)
    assert code == 4 and "no-such-host.invalid" in err and SECRET not in err
    assert not creds.exists() and not (root / "etc").exists()


def test_provision_for_host_prints_a_join_string_with_a_fresh_password(capsys, fake, etc):
    main, creds = etc
    code, out, err = run(capsys, "provision", "--for-host", "web1", "--role", "client",
                         "--broker-host", "10.1.1.1", "--config", str(main))
    assert code == 0
    assert "no TLS on this broker yet" in err
    broker = module.parse_url(out)
    assert (broker["user"], broker["host"], broker["port"], broker["tls"]) == (
        "client-web1", "10.1.1.1", 5672, False)
    state = fake.state()
    assert state["users"]["client-web1"] == broker["password"]
    assert state["perms"]["celery\tclient-web1"] == list(provision.CLIENT)
    assert not creds.exists()  # the broker host's own credentials are not touched
    run(capsys, "provision", "--for-host", "web1", "--config", str(main))
    assert fake.state()["perms"]["celery\tworker-web1"] == list(provision.FULL)


def test_provision_for_host_with_tls_set_up_gives_amqps_with_the_ca(capsys, fake, etc):
    main, creds = etc
    ca = tls.ca_files(main.parent)
    tls.setup(ca, main.parent / "rabbitmq", ["10.1.1.1"], group="root")
    code, out, err = run(capsys, "provision", "--for-host", "web1", "--broker-host",
                         "10.1.1.1", "--config", str(main))
    assert (code, err) == (0, "")
    broker = module.parse_url(out)
    assert (broker["tls"], broker["port"], broker["ca"]) == (True, 5671, ca.cert.read_text())


@pytest.mark.parametrize("argv", [
    ["provision", "--role", "client"], ["provision", "--broker-host", "h"],
    ["provision", "--for-host", "a", "--rotate-password"], ["provision", "--for-host", "-x"],
    ["provision", "--for-host", "a", "--role", "admin"], ["tls-setup", "--name", "a b"],
])
def test_for_host_options_are_checked(capsys, argv, fake, etc):
    main, creds = etc
    code, out, err = run(capsys, *argv, "--config", str(main))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert fake.calls() == []


def test_join_with_a_bad_url_exits_2_and_writes_nothing(capsys, etc):
    main, creds = etc
    code, out, err = run(capsys, "join", f"amqp://celery:{SECRET}@host:99999/celery",
                         "--config", str(main), "--group", "root")
    assert code == 2 and out == "" and SECRET not in err
    assert "port" in err and "amqp://celery:***@host:99999/celery" in err
    assert not creds.exists()


def test_join_with_a_missing_group_exits_3_and_writes_nothing(capsys, etc):
    main, creds = etc
    code, out, err = run(capsys, "join", f"amqp://celery:{SECRET}@host/celery",
                         "--config", str(main), "--group", "celeryd-no-such-group")
    assert code == 3 and SECRET not in out + err
    assert err == ("celeryd-admin: group 'celeryd-no-such-group' does not exist: install the "
                   "celeryd package or pass --group\n")
    assert not creds.exists()


# --- provision / deprovision through main() -------------------------------------------------

def test_provision_is_quiet_on_success_and_writes_the_file(capsys, fake, etc):
    main, creds = etc
    assert run(capsys, "provision", "--config", str(main), "--group", "root") == (0, "", "")
    password = credentials.read(creds)["password"]
    assert fake.state()["users"] == {"celery": password}


def test_provision_with_a_missing_group_exits_3_before_any_rabbitmqctl_call(capsys, fake, etc):
    main, creds = etc
    code, out, err = run(capsys, "provision", "--config", str(main), "--group",
                         "celeryd-no-such-group")
    assert code == 3 and "does not exist" in err and not creds.exists()
    assert fake.calls() == []


def test_provision_without_a_node_exits_4(capsys, fake, etc, monkeypatch):
    monkeypatch.setenv("FAKE_CTL_DOWN", "1")
    code, out, err = run(capsys, "provision", "--config", str(etc[0]), "--group", "root")
    assert code == 4 and out == "" and err.count("\n") == 1


@pytest.mark.parametrize("how", ["node down", "not installed"])
def test_provision_defer_if_absent_prints_one_line_and_exits_0(
        capsys, fake, etc, monkeypatch, tmp_path, how):
    if how == "node down":
        monkeypatch.setenv("FAKE_CTL_DOWN", "1")
    else:
        monkeypatch.setenv("CELERYD_RABBITMQCTL", str(tmp_path / "no-rabbitmqctl"))
    code, out, err = run(capsys, "provision", "--defer-if-absent", "--config", str(etc[0]),
                         "--group", "root")
    assert (code, out) == (0, "")
    assert err == provision.DEFER_MESSAGE + "\n"
    assert err == ("celeryd: no running RabbitMQ broker here; the setup finishes by itself when "
                   "rabbitmq-server starts here, or run: celeryd-admin provision (or "
                   "celeryd-admin join for a remote broker)\n")
    assert not etc[1].exists()


def test_a_failing_rabbitmqctl_command_exits_1_with_one_line(capsys, fake, etc, monkeypatch):
    monkeypatch.setenv("FAKE_CTL_FAIL", "add_vhost")
    code, out, err = run(capsys, "provision", "--config", str(etc[0]), "--group", "root")
    assert code == 1 and err.count("\n") == 1 and "add_vhost" in err


def test_deprovision_is_quiet_and_idempotent(capsys, fake, etc):
    main, creds = etc
    run(capsys, "provision", "--config", str(main), "--group", "root")
    assert run(capsys, "deprovision", "--config", str(main)) == (0, "", "")
    assert run(capsys, "deprovision", "--config", str(main), "--delete-vhost") == (0, "", "")
    assert not creds.exists() and fake.state()["users"] == {}


def test_deprovision_defer_if_absent_exits_0_and_still_removes_the_file(
        capsys, fake, etc, monkeypatch):
    main, creds = etc
    credentials.write(creds, {"password": SECRET}, 0)
    monkeypatch.setenv("FAKE_CTL_DOWN", "1")
    assert run(capsys, "deprovision", "--config", str(main))[0] == 4
    assert creds.exists()
    code, out, err = run(capsys, "deprovision", "--defer-if-absent", "--config", str(main))
    assert (code, out) == (0, "") and err.count("\n") == 1
    assert not creds.exists()


# --- check, without a broker ----------------------------------------------------------------

def test_result_lines_have_the_documented_shape():
    assert check.Result("OK", "dns", "h -> 1.2.3.4").line() == "OK   dns: h -> 1.2.3.4"
    assert check.Result("FAIL", "tcp", "refused", "start it", 4).line() == \
        "FAIL tcp: refused — start it"
    assert check.Result("SKIP", "login", "not checked").line() == "SKIP login: not checked"


def test_check_with_an_invalid_config_fails_config_exit_3_and_skips_the_rest(
        capsys, etc):
    main, _ = etc
    main.write_text("broker:\n  port: many\n")
    code, out, err = run(capsys, "check", "--config", str(main))
    lines = out.splitlines()
    assert code == 3 and err == ""
    assert lines[0].startswith("FAIL config: ") and "broker.port" in lines[0]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["SKIP", f"{name}:"] for name in check.STEPS[1:]]


def test_check_with_an_unresolvable_host_fails_dns_exit_4(capsys, etc, monkeypatch):
    main, creds = etc
    credentials.write(creds, {"host": "broker.invalid", "password": SECRET}, 0)

    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    code, out, err = run(capsys, "check", "--config", str(main))
    lines = out.splitlines()
    assert code == 4 and SECRET not in out + err
    assert lines[0].startswith("OK   config: broker amqp://celery:***@broker.invalid:5672/")
    assert lines[1].startswith("FAIL dns: cannot resolve broker host 'broker.invalid'")
    assert all(line.startswith("SKIP") for line in lines[2:]) and len(lines) == 6


def test_check_with_nothing_listening_fails_tcp_exit_4(capsys, etc):
    main, creds = etc
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    credentials.write(creds, {"host": "127.0.0.1", "port": port, "password": SECRET}, 0)
    code, out, err = run(capsys, "check", "--config", str(main))
    lines = out.splitlines()
    assert code == 4 and SECRET not in out + err
    assert lines[1] == "OK   dns: 127.0.0.1 -> 127.0.0.1"
    assert lines[2].startswith(f"FAIL tcp: cannot connect to port {port} (127.0.0.1: ")
    assert "—" in lines[2]
    assert [line[:4] for line in lines[3:]] == ["SKIP"] * 3
