"""Unit tests: celeryd-admin tls-setup makes a CA, a broker certificate and RabbitMQ's listener."""

import grp
import ipaddress
import stat
import subprocess

import pytest

from celeryd_pkg import account
from celeryd_pkg.admin import systemctl, tls
from celeryd_pkg.errors import ConfigError, UsageError
from tests.unit.admin.conftest import run

# Not root: a key that ignored the group given would show up as root's.
GROUP = "daemon"


def openssl(*args):
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                          check=True).stdout


def alt_names(certificate):
    """Return the certificate's subjectAltName entries as a set of (kind, value)."""
    text = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", certificate)
    _, _, entries = text.partition("\n")
    names = set()
    for entry in entries.strip().split(", "):
        kind, _, value = entry.partition(":")
        names.add(("IP", ipaddress.ip_address(value)) if kind == "IP Address" else (kind, value))
    return names


def test_a_second_run_keeps_the_ca_and_issues_a_new_server_certificate_from_it(tmp_path):
    ca, rabbitmq = tls.ca_files(tmp_path / "etc"), tmp_path / "rabbitmq"
    first = tls.setup(ca, rabbitmq, ["10.1.1.1"], group=GROUP)
    ca_pem, ca_key = ca.cert.read_bytes(), ca.key.read_bytes()
    server_pem = (rabbitmq / "tls" / "server.pem").read_bytes()
    second = tls.setup(ca, rabbitmq, ["10.1.1.1"], group=GROUP)
    assert (ca.cert.read_bytes(), ca.key.read_bytes()) == (ca_pem, ca_key)
    assert (rabbitmq / "tls" / "ca.pem").read_bytes() == ca_pem
    assert (rabbitmq / "tls" / "server.pem").read_bytes() != server_pem
    assert set(first) - set(second) == {str(ca.cert), str(ca.key)}
    assert openssl("verify", "-CAfile", ca.cert, rabbitmq / "tls" / "server.pem").strip() == (
        f"{rabbitmq / 'tls' / 'server.pem'}: OK")


def test_the_keys_are_private_and_the_broker_group_reads_only_its_own(tmp_path):
    ca, rabbitmq = tls.ca_files(tmp_path / "etc"), tmp_path / "rabbitmq"
    tls.setup(ca, rabbitmq, ["broker.example.org"], group=GROUP)
    server_key = (rabbitmq / "tls" / "server.key").stat()
    assert (stat.S_IMODE(server_key.st_mode), server_key.st_uid, server_key.st_gid) == (
        0o640, 0, grp.getgrnam(GROUP).gr_gid)
    ca_key = ca.key.stat()
    assert (stat.S_IMODE(ca_key.st_mode), ca_key.st_uid) == (0o600, 0)
    for public in (ca.cert, rabbitmq / "tls" / "ca.pem", rabbitmq / "tls" / "server.pem"):
        assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_the_certificate_names_every_host_name_and_address_given(tmp_path):
    rabbitmq = tmp_path / "rabbitmq"
    names = ["broker.example.org", "10.1.2.3", "::1", "rabbit"]
    tls.setup(tls.ca_files(tmp_path / "etc"), rabbitmq, names, group=GROUP)
    assert alt_names(rabbitmq / "tls" / "server.pem") == {
        ("DNS", "broker.example.org"), ("IP", ipaddress.ip_address("10.1.2.3")),
        ("IP", ipaddress.ip_address("::1")), ("DNS", "rabbit")}
    subject = openssl("x509", "-noout", "-subject", "-in", rabbitmq / "tls" / "server.pem")
    assert subject.strip() == "subject=CN = broker.example.org"


def test_the_rabbitmq_conf_opens_the_amqps_port_with_the_three_files(tmp_path):
    rabbitmq = tmp_path / "rabbitmq"
    written = tls.setup(tls.ca_files(tmp_path / "etc"), rabbitmq, ["10.1.1.1"], group=GROUP)
    conf = rabbitmq / "conf.d" / "50-celeryd-tls.conf"
    assert written[-1] == str(conf)
    settings = dict(line.split(" = ") for line in conf.read_text().splitlines()
                    if line and not line.startswith("#"))
    assert settings["listeners.ssl.default"] == str(account.PORTS["amqps"]) == "5671"
    files = {key: settings[f"ssl_options.{key}"] for key in ("cacertfile", "certfile", "keyfile")}
    assert files == {"cacertfile": f"{rabbitmq}/tls/ca.pem",
                     "certfile": f"{rabbitmq}/tls/server.pem",
                     "keyfile": f"{rabbitmq}/tls/server.key"}
    assert all(path in written for path in files.values())


@pytest.mark.parametrize("name", ["a b", "bad_name", "host/x", "evil,DNS:other.example", ""])
def test_a_bad_name_is_a_usage_error_naming_it_before_anything_is_written(tmp_path, name):
    with pytest.raises(UsageError) as info:
        tls.setup(tls.ca_files(tmp_path / "etc"), tmp_path / "rabbitmq", ["ok.example", name],
                  group=GROUP)
    assert info.value.exit_code == 2
    assert info.value.message == (f"celeryd-admin tls-setup: --name {name!r}: expected a host "
                                  f"name or an IP address")
    assert list(tmp_path.iterdir()) == []


def test_no_name_at_all_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as info:
        tls.setup(tls.ca_files(tmp_path / "etc"), tmp_path / "rabbitmq", [], group=GROUP)
    assert "give at least one --name" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_group_is_a_config_error_naming_it_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError) as info:
        tls.setup(tls.ca_files(tmp_path / "etc"), tmp_path / "rabbitmq", ["10.1.1.1"],
                  group="celeryd-no-such-group")
    assert info.value.exit_code == 3
    assert "group 'celeryd-no-such-group' does not exist" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_tls_setup_without_a_running_broker_says_when_it_takes_effect(
        capsys, monkeypatch, etc, tmp_path):
    main, _ = etc
    rabbitmq = tmp_path / "rabbitmq"
    # As on a host without systemd: on a developer's machine a running rabbitmq-server would
    # otherwise be restarted.
    monkeypatch.setattr(systemctl, "running", lambda root="/": False)
    code, out, err = run(capsys, "tls-setup", "--name", "127.0.0.1", "--rabbitmq-dir",
                         str(rabbitmq), "--rabbitmq-group", "root", "--config", str(main))
    assert (code, out) == (0, "")
    assert err == (f"celeryd-admin: TLS configured in {rabbitmq}; it takes effect when "
                   f"rabbitmq-server next starts\n")
    ca = tls.ca_files(main.parent)
    assert alt_names(rabbitmq / "tls" / "server.pem") == {
        ("IP", ipaddress.ip_address("127.0.0.1"))}
    assert (rabbitmq / "tls" / "ca.pem").read_bytes() == ca.cert.read_bytes()
