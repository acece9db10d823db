"""The application's Celery app, configured from /etc/celeryd exactly as the workers are.

    from celeryd_pkg.client import app
    print(app.send_task("celeryd.add", (4, 4)).get(timeout=1))

No URL or password in the application: all comes from the one config loader. The app is the
current app, so `@shared_task` functions imported after it send through it. It imports no
worker code and declares nothing: like celery-submit, it publishes to the queues' exchanges
and takes results on RabbitMQ's direct reply-to, or from the result store (results.backend:
redis; `app.AsyncResult(id).get()` then finds a result another process sent), so a
submit-only account is enough. Failures are celeryd's one-line exit-coded errors; a task that
raised re-raises its own exception, as in Celery.
"""

import socket
from contextlib import nullcontext
from functools import cached_property

from celery import Celery, states
from celery.backends.rpc import RPCBackend
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from kombu import Producer
from kombu.utils.functional import ChannelPromise

from celeryd_pkg import config as config_module
from celeryd_pkg.errors import CelerydError, ConfigError, ResultTimeout
from celeryd_pkg.protocol import REPLY_TO as DIRECT_REPLY_TO
from celeryd_pkg.settings import celery_settings, lazy_app

__all__ = ["app", "load_app", "submit_many", "ClientApp", "ClientResult",
           "DirectReplyBackend", "ResultTimeoutError"]

# An application waits for the broker one connect (up to broker.connect_timeout), not the
# workers' retry-forever, and sees the first error: a retry after a failed TLS handshake
# would report py-amqp's EINVAL instead.
CONNECT_RETRIES = 0


class ResultTimeoutError(ResultTimeout, CeleryTimeoutError):
    """No result in time: celeryd's ResultTimeout (exit code 6) and Celery's TimeoutError, so
    code catching either keeps working."""


class DirectReplyBackend(RPCBackend):
    """Celery's rpc backend (the workers reply to the task's reply_to) on RabbitMQ's direct
    reply-to: no reply queue to declare, replies arrive on the channel that sent the task.
    Celery keeps one backend, so one reply channel, per thread."""

    @property
    def binding(self):
        return self.Queue(DIRECT_REPLY_TO, no_declare=True)

    def on_task_call(self, producer, task_id):
        """Nothing to declare before a task is sent."""

    def reply_channel(self):
        """Return the channel consuming this thread's replies, opened on first use."""
        consumer = self.result_consumer
        if consumer._consumer is None:
            consumer.start(None)
        return consumer._connection.default_channel

    def forget_channel(self):
        """Drop the reply connection after a broker error: the next task opens a new one."""
        consumer = self.result_consumer
        if consumer._connection is not None:
            consumer._connection.collect()
        consumer._connection = consumer._consumer = None

    def get_task_meta(self, task_id, backlog_limit=1000):
        """Direct replies cannot be polled from a queue: take those the channel holds."""
        if self.result_consumer._consumer is not None:
            try:
                while True:
                    self.result_consumer.drain_events(timeout=0)
            except socket.timeout:
                pass
        meta = self._pending_messages.take(task_id, None)
        if meta is None:
            return {"status": states.PENDING, "result": None}
        self._pending_messages.put(task_id, meta)  # still there for get() and other polls
        return self.meta_from_decoded(meta)


class QueueExchangeProducer(Producer):
    """Publishes where Celery would use the default exchange (which a submit-only account may
    not write to) to the queue's own exchange: each queue has one of its name."""

    def publish(self, body, exchange=None, routing_key=None, **kwargs):
        if not getattr(exchange, "name", exchange):
            exchange = routing_key
        return super().publish(body, exchange=exchange, routing_key=routing_key, **kwargs)


class ClientResult(AsyncResult):
    """Celery's AsyncResult whose get() raises celeryd's errors for a timeout or a broker
    failure while waiting; a task that raised still re-raises its own exception."""

    def get(self, timeout=None, *args, **kwargs):
        try:
            return super().get(timeout, *args, **kwargs)
        except Exception as error:
            if self._has_arrived() or isinstance(error, CelerydError):
                raise
            if isinstance(error, CeleryTimeoutError):
                raise ResultTimeoutError(
                    f"celeryd: no result for task {self.id} within {timeout}s (is a worker "
                    f"consuming its queue? celeryd-admin check)") from None
            if _from_the_broker(error):
                raise self.app.broker_error(error) from None
            raise

    def _has_arrived(self):
        """Whether this result or a parent's came back (then an error is a task's own)."""
        node = self
        while node is not None:
            if node._cache is not None:
                return True
            node = node.parent
        return False


class ClientApp(Celery):
    """A Celery app that sends every task on its thread's channel, results by direct reply-to
    or from the store, and raises celeryd's exit-coded errors for broker failures."""

    # Used instead of result_backend's class; the setting stays the workers' rpc://.
    backend_cls = f"{__name__}:DirectReplyBackend"

    def __init__(self, config, **kwargs):
        # No main name: Celery would name a script's own tasks main.NAME, and as "celeryd"
        # a script's add() would become the built-in celeryd.add.
        super().__init__(None, set_as_current=True, **kwargs)
        self.celeryd_config = config
        self.direct_reply = config.results.backend != "redis"
        if not self.direct_reply:
            from celeryd_pkg.store import Publisher

            self.backend_cls = None  # Celery's redis backend, from result_backend
            self.store_publisher = Publisher(self)

    @property
    def thread_oid(self):  # the reply_to Celery gives every task (send_task, delay, canvas)
        return DIRECT_REPLY_TO if self.direct_reply else super().thread_oid

    @property
    def publisher(self):  # what holds this thread's channel for sending tasks
        return self.backend if self.direct_reply else self.store_publisher

    def producer_or_acquire(self, producer=None):
        """Context giving producer, else one on this thread's channel (connected when it
        first publishes, so an eager task never connects)."""
        if producer is None:
            channel = ChannelPromise(self.publisher.reply_channel)
            producer = QueueExchangeProducer(channel, auto_declare=False)
        return nullcontext(producer)

    def send_task(self, *args, **kwargs):
        """Celery's send_task. Raise BrokerUnreachable, TlsFailed or AccessRefused (one line,
        password masked) when the broker cannot take the task."""
        for may_retry in (True, False):
            # A channel from before (the broker restarted since) gets one retry.
            stale = (self.backend.result_consumer._consumer is not None if self.direct_reply
                     else self.store_publisher.connection is not None)
            try:
                return super().send_task(*args, **kwargs)
            except Exception as error:
                if isinstance(error, CelerydError) or not _from_the_broker(error):
                    raise
                self.publisher.forget_channel()
                if not (may_retry and stale):
                    raise self.broker_error(error) from None

    def broker_error(self, error):
        """Return the CelerydError that explains a broker error (kombu's wrapper unwrapped)
        or a result store's."""
        from celeryd_pkg import broker, store

        if _from_the_store(error):  # python3-redis's: the result store's
            return store.translate(error, self.celeryd_config)
        return broker.translate(_root_cause(error), self.celeryd_config)

    @cached_property
    def AsyncResult(self):
        return self.subclass_with_self(ClientResult)


def load_app(config_path=None):
    """Given a config file (default: /etc/celeryd/celeryd.yaml, or $CELERYD_CONFIG), return a
    ClientApp with the workers' settings, set as Celery's current app. Raise ConfigError when
    the config is invalid or names no broker password."""
    config = config_module.load(config_path)
    if not config.broker.password:
        credentials = config_module.config_paths(config_path)[2]
        raise ConfigError(
            f"celeryd: no broker password (in {credentials}): run celeryd-admin provision "
            f"on the broker host, or celeryd-admin join - here with its join string")
    settings = celery_settings(config)
    for queue in settings["task_queues"]:
        queue.no_declare = True  # the workers declare them; a client account may not
    settings.update(
        broker_transport_options=dict(settings["broker_transport_options"],
                                      max_retries=CONNECT_RETRIES),
        # send_task retries on a new reply channel itself: Celery's retry would publish on
        # a channel that consumes no replies.
        task_publish_retry=False,
        result_backend_always_retry=False,  # a client waits for the store seconds, not forever
        result_backend_transport_options={"retry_policy": {"max_retries": 2}},
    )
    client = ClientApp(config)
    client.conf.update(settings)
    # Current here and the default in every other thread (a web server's request threads),
    # where Celery would otherwise make its own app for amqp://guest@localhost.
    client.set_default()
    return client


def submit_many(tasks, wait=True, timeout=None, queue=None, window=None):
    """Given an iterable of tasks (`add.s(4, 4)`, {"task": "add", "args": [4, 4]} or
    ("add", [4, 4], {}), as --batch reads them), publish them pipelined and confirmed on one
    connection and yield a batch.Outcome (index, id, state, result, error) for each as it
    completes; without wait, state SENT once stored, in order. A list or tuple is checked
    whole before anything is sent, other iterables item by item: a bad item raises UsageError
    naming its index. timeout (default client.timeout) bounds the broker's silence."""
    from celeryd_pkg.pipeline import WINDOW, Pipeline

    config = _the_app().celeryd_config
    if wait and config.results.backend == "redis":
        raise ConfigError("celeryd: submit_many waits on direct reply-to, not in the result "
                          "store (results.backend: redis): pass wait=False, then look up ids")
    default_queue = queue or config.client.queue
    checked = _checked_tasks(tasks, default_queue)
    pipeline = Pipeline(config, wait=wait, timeout=timeout, window=window or WINDOW)
    try:
        if isinstance(checked, list):
            pipeline.check_queues({task.queue for _, task in checked})
        yield from pipeline.run(checked)
    finally:
        pipeline.close()


def _checked_tasks(tasks, default_queue):
    """Return [(index, Task)] for a list or tuple, else a generator that checks each item."""
    from celeryd_pkg.batch import to_task
    from celeryd_pkg.errors import UsageError

    def check(index, item):
        try:
            return index, to_task(item, default_queue)
        except ValueError as error:
            raise UsageError(f"submit_many: item {index}: {error}") from None

    if isinstance(tasks, (list, tuple)):
        return [check(index, item) for index, item in enumerate(tasks)]
    return (check(index, item) for index, item in enumerate(tasks))


def _the_app():
    return globals()["app"] if "app" in globals() else __getattr__("app")


def _from_the_broker(error):
    """Whether error is a connection, channel or socket failure (not the application's), or
    the result store's."""
    import amqp
    import kombu.exceptions

    return _from_the_store(error) or isinstance(error, kombu.exceptions.OperationalError) or (
        isinstance(_root_cause(error), (amqp.exceptions.AMQPError, OSError)))


def _from_the_store(error):
    return type(error).__module__.startswith("redis.")


def _root_cause(error):
    """kombu re-raises socket and amqp errors as its own: return the one it wrapped."""
    import kombu.exceptions

    while isinstance(error, kombu.exceptions.KombuError):
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    return error


# `from celeryd_pkg.client import app`: built on first use, from the installed config.
app: object  # declared for __all__; lazy_app sets it on first use
__getattr__ = lazy_app(globals(), load_app)
