"""The client's broker connection: TLS options, and broker failures as exit codes and one line."""

import contextlib
import errno
import json
import os
import socket
import ssl
import subprocess
import threading

import amqp
import amqp.protocol
import pytest

from celeryd_pkg import broker as module
from celeryd_pkg import config
from celeryd_pkg.errors import (
    AccessRefused, BrokerUnreachable, LoginRefused, TlsFailed, VhostRefused,
)

SECRET = "s3cret"
# What RabbitMQ answers a client that speaks TLS to its plain port: AMQP's protocol header.
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def load(tmp_path, **broker):
    """Given broker keys, return the Config of celeryd.yaml with them (user worker, vhost jobs
    at broker.example by default) and a credentials file holding the password SECRET."""
    keys = {"host": "broker.example", "user": "worker", "vhost": "jobs", **broker}
    main = tmp_path / "celeryd.yaml"
    main.write_text("broker:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in keys.items()))
    (tmp_path / "credentials").write_text(f"broker:\n  password: {SECRET}\n")
    return config.load(str(main), env={})


def free_port():
    """Return a local TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A certificate no client trusts (self-signed, for another name) and its key."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=elsewhere"], check=True, capture_output=True)
    return cert, key


@contextlib.contextmanager
def serving(answer):
    """Accept one connection on a local port, hand it to answer(connection); yield the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def serve():
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                answer(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(30)


def tls_with(cert_and_key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert_and_key)

    def answer(connection):
        with contextlib.suppress(OSError):
            context.wrap_socket(connection, server_side=True)
    return answer


def amqp_header(connection):
    connection.sendall(AMQP_HEADER)


def handshake_error(port):
    """Return the real error of a verifying TLS handshake with the server on port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with pytest.raises(ssl.SSLError) as info:
            ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1")
    return info.value


def explained(error, settings, vhost=None):
    """Return what translate makes of error, checked for what every message must be."""
    translated = module.translate(error, settings, vhost)
    assert SECRET not in translated.message
    assert "\n" not in translated.message and translated.message.strip() == translated.message
    return translated


# --- ssl_options ------------------------------------------------------------------------------

def test_ssl_options_verify_the_broker_by_default(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    (tmp_path / "celeryd.yaml").write_text(
        f"broker:\n  host: b.example\n  tls: true\n  ca_file: {ca}\n")

    def broker_of(env=None):
        return config.load(str(tmp_path / "celeryd.yaml"), env=env or {}).broker

    assert module.ssl_options(broker_of()) == {
        "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "b.example", "ca_certs": str(ca)}
    named = broker_of({"CELERYD_BROKER_SERVER_NAME": "other"})
    assert module.ssl_options(named)["server_hostname"] == "other"
    unverified = broker_of({"CELERYD_BROKER_VERIFY": "no"})
    assert module.ssl_options(unverified)["cert_reqs"] == ssl.CERT_NONE
    assert "server_hostname" not in module.ssl_options(unverified)
    assert module.ssl_options(broker_of({"CELERYD_BROKER_TLS": "no"})) is False


# --- translate: one row per failure -----------------------------------------------------------

def test_an_unresolvable_host_is_unreachable_exit_4_naming_the_host(tmp_path):
    settings = load(tmp_path)
    error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    translated = explained(error, settings)
    assert (type(translated), translated.exit_code) == (BrokerUnreachable, 4)
    assert "broker host 'broker.example' (Name or service not known)" in translated.message
    assert "broker.host" in translated.message


@pytest.mark.parametrize("vhost, named", [(None, "jobs"), ("other", "other")])
def test_a_refused_vhost_is_exit_5_naming_user_vhost_and_the_masked_url(tmp_path, vhost, named):
    settings = load(tmp_path)
    error = amqp.exceptions.NotAllowed(
        reply_text=f"NOT_ALLOWED - access to vhost '{named}' refused for user 'worker'",
        reply_code=530)
    translated = explained(error, settings, vhost)
    assert (type(translated), translated.exit_code) == (VhostRefused, 5)
    assert f"user 'worker' access to vhost '{named}'" in translated.message
    assert f"amqp://worker:***@broker.example:5672/{named}" in translated.message


def test_a_refused_login_is_exit_5_naming_the_user_and_the_masked_url(tmp_path):
    settings = load(tmp_path)
    error = amqp.exceptions.AccessRefused(
        reply_text="ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. "
                   "For details see the broker logfile.", reply_code=403)
    translated = explained(error, settings)
    assert (type(translated), translated.exit_code) == (LoginRefused, 5)
    assert "login of user 'worker' at amqp://worker:***@broker.example:5672/jobs" in (
        translated.message)
    assert "/etc/celeryd/credentials" in translated.message


def test_a_refusal_other_than_the_login_is_exit_5_with_the_brokers_reason(tmp_path):
    settings = load(tmp_path)
    reason = "access to queue 'q' in vhost 'jobs' refused for user 'worker'"
    error = amqp.exceptions.AccessRefused(reply_text="ACCESS_REFUSED - " + reason,
                                          reply_code=403)
    translated = explained(error, settings)
    assert (type(translated), translated.exit_code) == (AccessRefused, 5)
    assert translated.message == (
        f"broker refused access at amqp://worker:***@broker.example:5672/jobs: {reason}")


def test_an_untrusted_certificate_is_a_tls_failure_exit_4_naming_host_and_port(
        tmp_path, self_signed):
    with serving(tls_with(self_signed)) as port:
        error = handshake_error(port)
    assert isinstance(error, ssl.SSLCertVerificationError)
    settings = load(tmp_path, host="127.0.0.1", port=port, tls=True)
    translated = explained(error, settings)
    assert (type(translated), translated.exit_code) == (TlsFailed, 4)
    assert f"TLS to broker at 127.0.0.1:{port} failed ({error.verify_message}:" in (
        translated.message)
    assert "broker.ca_file" in translated.message
    assert f"amqps://worker:***@127.0.0.1:{port}/jobs" in translated.message


def test_tls_to_a_plain_amqp_port_is_a_tls_failure_that_asks_about_the_port(tmp_path):
    with serving(amqp_header) as port:
        error = handshake_error(port)
    assert not isinstance(error, ssl.SSLCertVerificationError)
    settings = load(tmp_path, host="127.0.0.1", port=port, tls=True)
    translated = explained(error, settings)
    assert (type(translated), translated.exit_code) == (TlsFailed, 4)
    assert f"TLS to broker at 127.0.0.1:{port} failed ({error.reason}: is broker.port " \
           f"({port}) the broker's TLS port?)" in translated.message


def test_a_broker_that_does_not_answer_in_time_is_unreachable_exit_4(tmp_path):
    settings = load(tmp_path, connect_timeout=7)
    translated = explained(socket.timeout("timed out"), settings)
    assert (type(translated), translated.exit_code) == (BrokerUnreachable, 4)
    assert translated.message.startswith(
        "broker at broker.example:5672 did not answer within 7s "
        "(amqp://worker:***@broker.example:5672/jobs)")


def test_a_refused_connection_is_unreachable_exit_4_naming_host_port_and_reason(tmp_path):
    settings = load(tmp_path)
    error = ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
    translated = explained(error, settings)
    assert (type(translated), translated.exit_code) == (BrokerUnreachable, 4)
    assert translated.message.startswith(
        "cannot connect to broker at broker.example:5672 (Connection refused)")


@pytest.mark.parametrize("error, detail", [
    (amqp.exceptions.ConnectionForced(reply_text="CONNECTION_FORCED - shutdown"),
     "CONNECTION_FORCED - shutdown"),
    (ValueError("odd frame"), "ValueError: odd frame"),
])
def test_any_other_broker_failure_is_unreachable_exit_4_with_the_masked_url(
        tmp_path, error, detail):
    translated = explained(error, load(tmp_path))
    assert (type(translated), translated.exit_code) == (BrokerUnreachable, 4)
    assert translated.message == (
        f"broker error at amqp://worker:***@broker.example:5672/jobs: {detail}")


# --- connect ----------------------------------------------------------------------------------

def test_connect_to_a_closed_port_raises_broker_unreachable_exit_4(tmp_path):
    port = free_port()
    settings = load(tmp_path, host="127.0.0.1", port=port, connect_timeout=5)
    with pytest.raises(BrokerUnreachable) as info:
        module.connect(settings)
    assert (type(info.value), info.value.exit_code) == (BrokerUnreachable, 4)
    assert info.value.message.startswith(f"cannot connect to broker at 127.0.0.1:{port} (")
    assert SECRET not in info.value.message and "\n" not in info.value.message


def test_connect_over_tls_to_an_untrusted_broker_raises_tls_failed(tmp_path, self_signed):
    with serving(tls_with(self_signed)) as port:
        settings = load(tmp_path, host="127.0.0.1", port=port, tls=True, connect_timeout=5)
        with pytest.raises(TlsFailed) as info:
            module.connect(settings)
    assert info.value.exit_code == 4
    assert f"TLS to broker at 127.0.0.1:{port} failed" in info.value.message
    assert SECRET not in info.value.message


def test_a_publish_to_a_queue_nobody_declared_names_the_queue_and_the_fix(tmp_path):
    error = amqp.exceptions.NotFound(
        reply_text="NOT_FOUND - no exchange 'reports' in vhost 'celery'", method_sig=(60, 40))
    translated = explained(error, load(tmp_path))
    assert isinstance(translated, BrokerUnreachable)
    assert translated.message.startswith("no queue 'reports' on amqp://")
    assert "no worker has consumed from it yet" in translated.message


# --- queue_depths -----------------------------------------------------------------------------

class DeclaringConnection:
    """Answers passive declares from {queue: (ready, consumers)}; as RabbitMQ does, a declare
    of a missing queue raises NotFound and closes its channel, which then refuses more."""

    def __init__(self, queues):
        self.queues = queues
        self.channels = []

    def channel(self):
        channel = DeclaringChannel(self.queues)
        self.channels.append(channel)
        return channel


class DeclaringChannel:
    def __init__(self, queues):
        self.queues = queues
        self.is_open = True
        self.declared = []

    def queue_declare(self, name, passive=False):
        assert passive and self.is_open
        self.declared.append(name)
        if name not in self.queues:
            self.is_open = False
            raise amqp.exceptions.NotFound(reply_text=f"NOT_FOUND - no queue '{name}'")
        ready, consumers = self.queues[name]
        return amqp.protocol.queue_declare_ok_t(name, ready, consumers)

    def close(self):
        self.is_open = False


def test_queue_depths_are_ready_and_consumers_in_order_none_for_a_missing_queue():
    connection = DeclaringConnection({"celery": (5, 2), "jobs": (0, 1)})
    depths = module.queue_depths(connection, ["gone", "celery", "lost", "jobs"])
    assert list(depths.items()) == [("gone", None), ("celery", (5, 2)), ("lost", None),
                                    ("jobs", module.QueueDepth(ready=0, consumers=1))]
    # A fresh channel after each missing queue, and every channel closed at the end.
    assert [channel.declared for channel in connection.channels] == [
        ["gone"], ["celery", "lost"], ["jobs"]]
    assert not any(channel.is_open for channel in connection.channels)


def test_queue_depths_let_other_broker_errors_through_and_close_the_channel():
    connection = DeclaringConnection({})
    connection.channel = lambda: connection.channels.append(Refusing()) or connection.channels[-1]
    with pytest.raises(amqp.exceptions.AccessRefused):
        module.queue_depths(connection, ["celery"])
    assert not connection.channels[0].is_open


class Refusing(DeclaringChannel):
    def __init__(self):
        super().__init__({})

    def queue_declare(self, name, passive=False):
        raise amqp.exceptions.AccessRefused(reply_text="ACCESS_REFUSED")
