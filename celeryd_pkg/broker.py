"""Lean AMQP connections with py-amqp, and broker failures turned into exit-coded errors.

celery-submit and celeryd-admin check use this instead of importing Celery: it costs a
third of the start-up time and memory.
"""

import re
import socket
from collections import namedtuple

from celeryd_pkg import account
from celeryd_pkg.errors import (
    AccessRefused, BrokerUnreachable, LoginRefused, TlsFailed, VhostRefused,
)

__all__ = ["connect", "close", "translate", "missing_queue", "ssl_options", "queue_depths",
           "QueueDepth"]

# What the broker tells of a queue: messages ready for delivery (not those delivered and
# still unacked) and the consumers subscribed to it now.
QueueDepth = namedtuple("QueueDepth", "ready consumers")


def ssl_options(broker, host=None):
    """Given the broker section (and the node connected to, default broker.host), return
    py-amqp's (and kombu's broker_use_ssl) TLS options: False for plain AMQP, else a dict that
    verifies the broker's certificate and host name unless broker.verify is off."""
    if not broker.tls:
        return False
    import ssl

    options = {"cert_reqs": ssl.CERT_REQUIRED if broker.verify else ssl.CERT_NONE}
    if broker.verify:
        # py-amqp checks the host name only when it is given one.
        options["server_hostname"] = broker.server_name or host or broker.host
    for key, option in (("ca_file", "ca_certs"), ("cert_file", "certfile"),
                        ("key_file", "keyfile")):
        if getattr(broker, key):
            options[option] = getattr(broker, key)
    return options


def connect(config, vhost=None, heartbeat=0):
    """Given a Config, return a connected amqp.Connection (with heartbeat seconds, which the
    caller keeps up with heartbeat_tick()) to the first node of the broker that answers, in
    broker.hosts order. Raise BrokerUnreachable or AccessRefused (with the masked URL and a
    hint) when the broker can't be used: a refusal at once, unreachable once every node is."""
    import amqp

    b = config.broker
    nodes = config.broker_addresses()
    for tried, (host, port) in enumerate(nodes, 1):
        connection = amqp.Connection(
            host=account.netloc(host, port), userid=b.user, password=b.password or "",
            virtual_host=b.vhost if vhost is None else vhost,
            connect_timeout=b.connect_timeout, heartbeat=heartbeat, ssl=ssl_options(b, host))
        try:
            connection.connect()
            return connection
        except Exception as error:  # noqa: BLE001 - translated, never shown as a traceback
            failure = translate(error, config, vhost, node=(host, port))
            # Accounts are cluster-wide: only a node out of reach is worth the next one.
            if tried == len(nodes) or not isinstance(failure, BrokerUnreachable):
                if tried > 1 and isinstance(failure, BrokerUnreachable):
                    failure.message = f"none of {tried} broker nodes answered; the last: " \
                                      f"{failure.message}"
                raise failure from None
            connection.collect()  # never connected: nothing to close politely
    raise AssertionError("broker_addresses() is never empty")


def close(connection):
    """Close connection politely, else free it: callers close when their work is done or
    beyond saving, so a failed close is not an error."""
    try:
        connection.collect() if connection.transport is None else connection.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        connection.collect()


def queue_depths(connection, names):
    """Given a connected amqp.Connection and queue names, return {name: QueueDepth} in the
    order given, None for a queue that does not exist. Uses a passive queue.declare, which
    creates nothing and needs no permission beyond the vhost (a submit-only account may ask).
    Other broker errors propagate: translate() them."""
    import amqp

    depths = {}
    channel = connection.channel()
    try:
        for name in names:
            try:
                declared = channel.queue_declare(name, passive=True)
            except amqp.exceptions.NotFound:
                depths[name] = None
                # The broker closes a channel whose passive declare failed.
                channel = connection.channel()
                continue
            depths[name] = QueueDepth(declared.message_count, declared.consumer_count)
    finally:
        if channel.is_open:
            channel.close()
    return depths


def translate(error, config, vhost=None, node=None):
    """Return the CelerydError that explains error (raised while talking to the broker's
    node (host, port), by default broker.host's, about vhost, by default the configured one)."""
    import amqp

    url = config.broker_url(vhost=vhost)
    b = config.broker
    vhost = b.vhost if vhost is None else vhost
    host, port = node or (b.host, b.port)
    if isinstance(error, socket.gaierror):
        return BrokerUnreachable(
            f"cannot resolve broker host '{host}' ({error.strerror}): check broker.host "
            f"in /etc/celeryd/celeryd.yaml")
    if isinstance(error, amqp.exceptions.NotAllowed):
        return VhostRefused(
            f"broker refused user '{b.user}' access to vhost '{vhost}' at {url}: "
            f"grant it with celeryd-admin provision (or rabbitmqctl set_permissions)")
    if isinstance(error, amqp.exceptions.AccessRefused):
        reason = (error.reply_text or "").split(" - ", 1)[-1]
        if "login" in reason.lower() or "authentication" in reason.lower():
            return LoginRefused(
                f"broker refused the login of user '{b.user}' at {url}: check the password in "
                f"/etc/celeryd/credentials (celeryd-admin check)")
        return AccessRefused(f"broker refused access at {url}: {reason}")
    tls = _tls_problem(error, b, host, port)
    if tls:
        return TlsFailed(f"TLS to broker at {host}:{port} failed ({tls}) at {url}")
    if isinstance(error, (socket.timeout, TimeoutError)):
        return BrokerUnreachable(
            f"broker at {host}:{port} did not answer within {b.connect_timeout}s "
            f"({url}): is rabbitmq-server running and reachable?")
    if isinstance(error, OSError):
        reason = error.strerror or str(error) or type(error).__name__
        return BrokerUnreachable(
            f"cannot connect to broker at {host}:{port} ({reason}): is rabbitmq-server "
            f"running? (systemctl status rabbitmq-server; celeryd-admin check)")
    if isinstance(error, amqp.exceptions.NotFound):
        # Publishing to a queue's exchange that no worker has declared yet.
        match = re.search(r"no exchange '([^']*)'", getattr(error, "reply_text", "") or "")
        if match:
            return missing_queue(match.group(1), config)
    if isinstance(error, amqp.exceptions.AMQPError):
        text = getattr(error, "reply_text", "") or str(error)
        return BrokerUnreachable(f"broker error at {url}: {text}")
    return BrokerUnreachable(f"broker error at {url}: {type(error).__name__}: {error}")


def missing_queue(queue, config):
    """Return the error for a task sent to a queue that does not exist on the broker."""
    return BrokerUnreachable(
        f"no queue '{queue}' on {config.broker_url()}: no worker has consumed from it yet "
        f"(systemctl start celery-worker) or its name (--queue, client.queue) is misspelt")


def _tls_problem(error, broker, host, port):
    """Return a short reason and hint when error is a TLS failure, else None."""
    import ssl

    if isinstance(error, ssl.SSLCertVerificationError):
        reason = getattr(error, "verify_message", None) or "verify failed"
        return (f"{reason}: the broker's certificate is not trusted for "
                f"'{broker.server_name or host}'; check broker.ca_file and "
                f"broker.server_name")
    if isinstance(error, ssl.SSLError):
        reason = getattr(error, "reason", None) or error.strerror or "handshake failed"
        return f"{reason}: is broker.port ({port}) the broker's TLS port?"
    return None
