"""Unit tests: celeryd-admin join writes credentials, CA and the units' drop-in, or nothing."""

import stat

from celeryd_pkg import account
from celeryd_pkg import config as config_module
from celeryd_pkg.admin import join, tls
from tests.unit.admin.conftest import SECRET, run


def units_under(tmp_path, monkeypatch, *units):
    """A root directory (CELERYD_ROOT) where the given units are installed; return it."""
    root = tmp_path / "root"
    (root / "lib/systemd/system").mkdir(parents=True)
    for unit in units:
        (root / "lib/systemd/system" / unit).write_text("[Service]\n")
    monkeypatch.setenv("CELERYD_ROOT", str(root))
    return root


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
    assert account.load(creds) == {"host": "broker.example.org", "port": 5672,
                                       "vhost": "celery", "user": "celery",
                                       "password": SECRET + "/", "tls": False}
    assert stat.S_IMODE(creds.stat().st_mode) == 0o640


def test_join_allow_plain_is_silent_and_remembered(capsys, monkeypatch, etc):
    main, creds = etc
    code, out, err = run(capsys, "join", "-", "--allow-plain", "--config", str(main),
                         "--group", "root", stdin=f"amqp://u:{SECRET}@10.9.8.7/v",
                         monkeypatch=monkeypatch)
    assert (code, err) == (0, "")
    assert account.load(creds)["allow_plain"] is True
    assert config_module.load(str(main), env={}).plain_remote_warning() is None


def test_join_amqps_writes_the_ca_beside_the_config_and_turns_tls_on(capsys, monkeypatch, etc,
                                                                      tmp_path):
    main, creds = etc
    ca = tls.ca_files(tmp_path / "broker-etc")
    tls.setup(ca, tmp_path / "rabbitmq", ["10.9.8.7"], group="root")
    text = account.to_url({"host": "10.9.8.7", "port": 5671, "vhost": "celery", "user": "worker-a",
                           "password": SECRET, "tls": True}, masked=False, ca_file=ca.cert)
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


def test_join_lets_installed_worker_and_beat_units_reach_the_broker(capsys, monkeypatch, etc,
                                                                     tmp_path):
    main, creds = etc
    root = units_under(tmp_path, monkeypatch, "celery-worker.service", "celery-worker@.service",
                       "celery-beat.service")
    code, out, err = run(capsys, "join", "-", "--allow-plain", "--config", str(main),
                         "--group", "root", stdin=f"amqp://u:{SECRET}@10.9.8.7/v",
                         monkeypatch=monkeypatch)
    assert code == 0, err
    assert join.UNITS == ("celery-worker.service", "celery-worker@.service",
                          "celery-beat.service")
    for unit in join.UNITS:
        text = (root / "etc/systemd/system" / f"{unit}.d" / join.DROPIN).read_text()
        assert "[Service]\nIPAddressAllow=10.9.8.7\n" in text


def test_join_to_an_unresolvable_host_exits_4_and_writes_nothing(capsys, monkeypatch, etc,
                                                                 tmp_path):
    main, creds = etc
    root = units_under(tmp_path, monkeypatch, "celery-worker.service")
    code, out, err = run(capsys, "join", "-", "--allow-plain", "--config", str(main),
                         "--group", "root", stdin=f"amqp://u:{SECRET}@no-such-host.invalid/v",
                         monkeypatch=monkeypatch)
    assert code == 4 and "no-such-host.invalid" in err and SECRET not in err
    assert not creds.exists() and not (root / "etc").exists()


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


STORE_SECRET = "store-pw-Qx7/+z"


def test_join_with_a_store_login_writes_it_and_stores_results_and_prints_no_secret(
        capsys, monkeypatch, etc):
    main, creds = etc
    url = account.to_url({"host": "10.9.8.7", "vhost": "v", "user": "client-web1",
                          "password": SECRET, "tls": False}, masked=False,
                         results_password=STORE_SECRET)
    code, out, err = run(capsys, "join", "-", "--allow-plain", "--config", str(main),
                         "--group", "root", stdin=url, monkeypatch=monkeypatch)
    assert (code, err) == (0, "")
    assert out == ("joined amqp://client-web1:***@10.9.8.7:5672/v with results kept in the "
                   "result store there; check with: celeryd-admin check\n")
    assert account.load_results(creds) == {"user": "client-web1", "password": STORE_SECRET}
    settings = config_module.load(str(main), env={})
    assert (settings.results.backend, settings.results.host, settings.results.user) == (
        "redis", "10.9.8.7", "client-web1")
    # Joining again without a store login keeps the one the host has.
    run(capsys, "join", "-", "--allow-plain", "--config", str(main), "--group", "root",
        stdin=url.split("?")[0], monkeypatch=monkeypatch)
    assert account.load_results(creds) == {"user": "client-web1", "password": STORE_SECRET}


def test_join_keeps_an_operators_results_file_that_already_stores_in_redis(
        capsys, monkeypatch, etc):
    main, _ = etc
    conf_d = main.parent / "conf.d"
    conf_d.mkdir(exist_ok=True)
    own = "results:\n  backend: redis\n  expires: 600\n"
    (conf_d / "20-results.yaml").write_text(own)
    url = account.to_url({"host": "10.9.8.7", "vhost": "v", "user": "u", "password": SECRET,
                          "tls": False}, masked=False, results_password=STORE_SECRET)
    code, _, _ = run(capsys, "join", "-", "--allow-plain", "--config", str(main), "--group",
                     "root", stdin=url, monkeypatch=monkeypatch)
    assert code == 0 and (conf_d / "20-results.yaml").read_text() == own


def test_join_to_a_cluster_lets_the_units_reach_every_node_and_keeps_the_list(
        capsys, monkeypatch, etc, tmp_path):
    main, creds = etc
    root = units_under(tmp_path, monkeypatch, "celery-worker.service")
    code, out, err = run(capsys, "join", "-", "--allow-plain", "--config", str(main),
                         "--group", "root", stdin=f"amqp://u:{SECRET}@10.9.8.7,10.9.8.8:5999/v",
                         monkeypatch=monkeypatch)
    assert code == 0, err
    text = (root / "etc/systemd/system/celery-worker.service.d" / join.DROPIN).read_text()
    assert "[Service]\nIPAddressAllow=10.9.8.7\nIPAddressAllow=10.9.8.8\n" in text
    assert account.load(creds)["hosts"] == [
        "10.9.8.7:5672", "10.9.8.8:5999"]
