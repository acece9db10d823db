"""Celery's settings from celeryd's config: the reliable messaging every app of ours uses.

The worker's app (`app.py`), the control-only app (admin) and the application's client app
(`client.py`) all take their settings from here, so a client and the workers never disagree
on serializers, queues, confirms or the result backend.
"""

from kombu import Exchange, Queue

from celeryd_pkg import account
from celeryd_pkg.broker import ssl_options
from celeryd_pkg.errors import ConfigError

__all__ = ["celery_settings", "result_settings", "task_queues", "cluster_settings", "lazy_app",
           "RetryingRedisBackend"]


def task_queues(config):
    """Return the durable queues named by worker.queues, each bound to an exchange of its
    name: direct on one broker; on a cluster, quorum queues (replicated on the nodes) bound to
    topic exchanges, which Celery's native delayed delivery needs for countdown tasks."""
    kind, arguments = ("topic", {"x-queue-type": "quorum"}) if config.is_cluster() \
        else ("direct", None)
    return [Queue(name, Exchange(name, type=kind, durable=True), routing_key=name,
                  durable=True, queue_arguments=arguments) for name in config.worker.queues]


def cluster_settings(config):
    """Given a Config, return the settings a RabbitMQ cluster needs (none for one broker):
    quorum queues, consumers without the global QoS they refuse, countdowns through native
    delayed delivery. Raise ConfigError under Celery before 5.5, which has none of these."""
    if not config.is_cluster():
        return {}
    import celery

    if celery.VERSION < (5, 5):
        raise ConfigError(
            f"celeryd: broker.hosts names a cluster of {len(config.broker.hosts)} nodes, whose "
            f"task queues are quorum queues, and Celery {celery.__version__} cannot consume "
            f"them (it asks for a global QoS, which they refuse): a cluster needs Debian 13's "
            f"Celery 5.5; on Debian 12 name one broker host (broker.host)")
    return dict(task_default_queue_type="quorum", worker_detect_quorum_queues=True,
                task_default_exchange_type="topic")


def celery_settings(config):
    """Given a Config, return Celery settings for json-only, late-ack, durable, confirmed
    messaging."""
    return dict(
        # A cluster's nodes in order: kombu fails over to the next when one is lost.
        broker_url=";".join(account.to_url(dict(config.broker.as_dict(), hosts=[], host=host,
                                                port=port), masked=False)
                            for host, port in config.broker_addresses()),
        broker_failover_strategy="round-robin",
        broker_connection_timeout=config.broker.connect_timeout,
        broker_heartbeat=config.broker.heartbeat,
        broker_use_ssl=_broker_ssl(config),
        # Keep retrying a broker that is down at start or goes away: systemd should see a
        # worker waiting, not a crash loop.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Every publish waits for the broker's confirm: a task accepted is a task stored.
        broker_transport_options={"confirm_publish": True},
        **result_settings(config),
        result_expires=config.results.expires,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Ack after the task ran, and requeue when its child dies: nothing in flight is lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_delivery_mode="persistent",
        task_queues=task_queues(config),
        task_default_queue=config.worker.queues[0],
        task_create_missing_queues=False,
        task_time_limit=config.tasks.time_limit,
        worker_prefetch_multiplier=config.worker.prefetch_multiplier,
        worker_concurrency=config.worker.concurrency,
        worker_max_memory_per_child=config.worker.max_memory_per_child,
        # Task events (task-received/started/succeeded/failed, for Flower and `celery events`)
        # cost a publish each; worker.py turns worker heartbeats on with them.
        worker_send_task_events=config.worker.send_events,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=True,
        enable_utc=True,
        **cluster_settings(config),
    )


def _broker_ssl(config):
    """kombu's TLS options: on a cluster the name verified is each node's own (kombu puts the
    URL's host where server_hostname is None)."""
    options = ssl_options(config.broker) or None
    if options and config.is_cluster() and not config.broker.server_name \
            and "server_hostname" in options:
        options["server_hostname"] = None
    return options


def result_settings(config):
    """Given a Config, return the result backend's settings: rpc (replies straight to the
    waiting client, nothing stored), or the Redis store of results.* (kept results.expires
    seconds, for any client to look up later)."""
    if config.results.backend != "redis":
        return dict(result_backend="rpc://", result_persistent=True)
    settings = dict(
        result_backend=f"{__name__}:RetryingRedisBackend+{config.results_url(masked=False)}",
        # A worker waits out a store restart instead of losing the result it holds, however
        # long: each operation retries (always_retry), and so does the write itself (its
        # retry policy, 20 tries by default), a try every 5 s at most.
        result_backend_always_retry=True,
        result_backend_transport_options={"retry_policy": {"max_retries": None,
                                                           "interval_max": 5}},
        result_extended=False,
        redis_socket_connect_timeout=config.broker.connect_timeout,
    )
    if config.results.tls:
        import ssl

        # The broker's CA and verification: tls-setup made one CA for both.
        verify = config.broker.verify
        use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
                   "ssl_check_hostname": verify}
        if config.broker.ca_file:
            use_ssl["ssl_ca_certs"] = config.broker.ca_file
        settings["redis_backend_use_ssl"] = use_ssl
    return settings


def lazy_app(module_globals, build):
    """Return a module __getattr__ that builds the module's `app` with build() on first use
    (`celery -A MODULE` and `from MODULE import app` look it up) and keeps it."""
    def __getattr__(name):
        if name != "app":
            raise AttributeError(name)
        module_globals["app"] = build()
        return module_globals["app"]
    return __getattr__


RetryingRedisBackend: type  # declared for __all__; __getattr__ makes it on first use


def __getattr__(name):
    """RetryingRedisBackend, made on first use (Celery finds it by result_backend's name):
    importing settings costs no import of Celery's redis backend."""
    if name != "RetryingRedisBackend":
        raise AttributeError(name)
    from celery.backends.redis import RedisBackend
    from celery.utils.log import get_logger

    logger = get_logger(__name__)

    class RetryingRedisBackend(RedisBackend):
        """Celery's redis backend that retries a store that is down (Celery 5.2's retries
        nothing under result_backend_always_retry: the result of a task that ended then was
        lost), but not a refused login: that needs the operator."""

        warned = 0.0

        def exception_safe_to_retry(self, exc):
            import time

            import redis.exceptions

            if isinstance(exc, redis.exceptions.AuthenticationError) or not isinstance(
                    exc, self.connection_errors):
                return False
            if time.monotonic() - self.warned > 10:  # a line per 10 s, not per try
                self.warned = time.monotonic()
                logger.warning("Result store unreachable (%s); retrying, the result is kept "
                               "until it is back", exc)
            return True

    globals()[name] = RetryingRedisBackend
    return RetryingRedisBackend
