"""The result store, client side: where celery-submit waits for and looks up results.

With `results.backend: redis`, Celery's redis backend on the workers keeps each result as the
key celery-task-meta-<id> (JSON: status, result, traceback, ...) for results.expires seconds
and publishes it on the channel of the same name. celery-submit reads it with python3-redis
directly (no Celery import: start-up time), imported only when the backend is redis. Every
command used is one the client role of the store's ACL allows: SUBSCRIBE, MGET, PING.
"""

import json
import threading
import time

from celeryd_pkg.errors import (
    AccessRefused, BrokerUnreachable, ConfigError, LoginRefused, ResultTimeout, TlsFailed,
    UsageError,
)
from celeryd_pkg.protocol import READY_STATES

__all__ = ["KEY_PREFIX", "NOT_STORED", "require_store", "not_found_message", "check_id",
           "timeout_error", "connection_options", "translate", "Waiter", "outcome",
           "Publisher"]

KEY_PREFIX = "celery-task-meta-"
NOT_STORED = ("results are not stored (results.backend: rpc); set results.backend: redis to "
              "look results up later (README, 'Results you can come back to')")


def require_store(config):
    """Raise ConfigError (exit 3) unless results are stored, saying how to store them."""
    if config.results.backend != "redis":
        raise ConfigError(f"celery-submit: {NOT_STORED}")


def not_found_message(task_id):
    return (f"celery-submit: no result for {task_id} (not done yet, older than "
            f"results.expires, or never sent)")


def timeout_error(config, task_id, timeout):
    """The ResultTimeout (exit 6) of a task sent: where its result can still be found."""
    later = (f"look it up later: celery-submit result {task_id}"
             if config.results.backend == "redis" else NOT_STORED)
    error = ResultTimeout(f"celery-submit: no result for task {task_id} within {timeout:g}s "
                          f"(is a worker running? celeryd-admin check); {later}")
    error.task_id = task_id
    return error


def check_id(task_id):
    """Return task_id if it can be a task id (printable, no spaces); raise UsageError."""
    if not task_id or not task_id.isprintable() or any(c.isspace() for c in task_id):
        raise UsageError(f"celery-submit: result: {task_id!r}: expected a task id, as "
                         f"celery-submit --no-wait prints it")
    return task_id


def connection_options(config):
    """Given a Config, return python3-redis's connection keywords for the store: the login
    of results.user/password, TLS verified with the broker's CA unless broker.verify is off."""
    results, broker = config.results, config.broker
    options = dict(host=results.host, port=results.port, db=results.db,
                   username=results.user or None, password=results.password or None,
                   socket_connect_timeout=broker.connect_timeout,
                   socket_timeout=broker.connect_timeout)
    if results.tls:
        import ssl

        options.update(ssl=True, ssl_cert_reqs=ssl.CERT_REQUIRED if broker.verify else ssl.CERT_NONE,
                       ssl_check_hostname=broker.verify)
        if broker.ca_file:
            options["ssl_ca_certs"] = broker.ca_file
    return options


def translate(error, config):
    """Return the CelerydError that explains a python3-redis error, the password masked."""
    import redis.exceptions as failures

    url = config.results_url()
    where = f"{config.results.host}:{config.results.port}"
    # python3-redis 4.3 raises a bare ResponseError for WRONGPASS and NOPERM, later ones
    # their own classes.
    reply = str(error).split(" ", 1)[0] if isinstance(error, failures.ResponseError) else ""
    if isinstance(error, failures.AuthenticationError) or reply in ("WRONGPASS", "NOAUTH"):
        return LoginRefused(f"the result store refused the login at {url}: check results.user "
                            f"and results.password in /etc/celeryd/credentials")
    if isinstance(error, failures.NoPermissionError) or reply == "NOPERM":
        return AccessRefused(f"the result store refused a command at {url} ({error}): the "
                             f"account's ACL lacks it")
    reason = str(error).rstrip(".") or type(error).__name__
    if "SSL" in reason or "certificate" in reason:
        return TlsFailed(f"TLS to the result store at {where} failed ({reason}; {url}): check "
                         f"broker.ca_file (the store's CA too) and results.host")
    if isinstance(error, (failures.ConnectionError, failures.TimeoutError, OSError)):
        return BrokerUnreachable(
            f"cannot reach the result store at {where} ({reason}; {url}): is redis-server "
            f"running there? (results.host, results.port)")
    return BrokerUnreachable(f"result store error at {url}: {type(error).__name__}: {error}")


class Waiter:
    """Results of some task ids from the store. SUBSCRIBE comes first, then MGET: a result
    stored between the two is in the MGET's answer, one stored after it comes as a message.
    Without subscribe it only looks once."""

    def __init__(self, config, task_ids, subscribe=True):
        import redis

        self.config = config
        self.task_ids = list(dict.fromkeys(task_ids))
        self.client = redis.Redis(**connection_options(config))
        self.pubsub = None
        try:
            if subscribe:
                self.pubsub = self.client.pubsub()
                self.pubsub.subscribe(*(KEY_PREFIX + task_id for task_id in self.task_ids))
                self._confirmed()
            else:
                self.client.ping()
        except Exception as error:  # noqa: BLE001 - translated, never shown as a traceback
            self.close()
            raise translate(error, config) from None

    def _confirmed(self):
        """Wait for the store to confirm every subscription: only then is MGET race-free."""
        pending = len(self.task_ids)
        deadline = time.monotonic() + self.config.broker.connect_timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer to SUBSCRIBE")
            message = self.pubsub.get_message(timeout=remaining)
            if message and message["type"] == "subscribe":
                pending -= 1

    def results(self, timeout=0):
        """Return {id: Celery's meta} of the ids whose result is ready within timeout."""
        found = {}
        try:
            keys = [KEY_PREFIX + task_id for task_id in self.task_ids]
            for task_id, raw in zip(self.task_ids, self.client.mget(keys)):
                self._keep(found, task_id, raw)
            deadline = time.monotonic() + timeout
            while self.pubsub is not None and len(found) < len(self.task_ids):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                message = self.pubsub.get_message(timeout=min(remaining, 1.0))
                if message and message["type"] == "message":
                    channel = message["channel"].decode()
                    self._keep(found, channel[len(KEY_PREFIX):], message["data"])
        except Exception as error:  # noqa: BLE001 - translated, never shown as a traceback
            raise translate(error, self.config) from None
        return found

    @staticmethod
    def _keep(found, task_id, raw):
        if raw is None:
            return
        meta = json.loads(raw)
        if meta.get("status") in READY_STATES:
            found[task_id] = meta

    def close(self):
        for connection in (self.pubsub, self.client):
            try:
                if connection is not None:
                    connection.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def outcome(task_id, meta, runtime=None):
    """Given an id and its stored meta (None: not found), return celery-submit's outcome."""
    if meta is None:
        return {"id": task_id, "state": "PENDING", "result": None, "runtime": runtime}
    return {"id": task_id, "state": meta.get("status"), "result": meta.get("result"),
            "runtime": runtime}


class Publisher(threading.local):
    """The Python client's broker connection for sending tasks, one per thread, when results
    come from the store (with direct reply-to, the reply channel sends them): the channel
    methods of client.DirectReplyBackend."""

    connection = None

    def __init__(self, app):
        self.app = app

    def reply_channel(self):
        if self.connection is None:
            self.connection = self.app.connection_for_write()
        return self.connection.default_channel

    def forget_channel(self):
        if self.connection is not None:
            self.connection.collect()
        self.connection = None
