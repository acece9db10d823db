"""Build the Celery app from celeryd's config, with the reliable settings always on.

`celery -A celeryd_pkg.app inspect ping` (and Flower) work with the same config and
credentials, so operators keep the Celery tooling they know. The control-only app (no task
code imported) serves celeryd-admin and `celery -A celeryd_pkg.admin.control inspect ...`.
"""

import importlib
import sys

from celery import Celery
from kombu import Exchange, Queue

from celeryd_pkg import config as config_module
from celeryd_pkg.broker import ssl_options
from celeryd_pkg.errors import ConfigError

__all__ = ["make_app", "make_control_app", "node_name", "app"]


def node_name(config, instance=None):
    """Return the worker's node name: worker.name, else NAME@HOST (celery@HOST by default)."""
    import socket

    return config.worker.name or f"{instance or 'celery'}@{socket.gethostname()}"


def make_app(config):
    """Given a Config, return the worker's Celery app: the control app's settings, the built-in
    tasks and the operator's task modules. Raise ConfigError if a task module cannot be
    imported."""
    from celeryd_pkg import tasks

    app = make_control_app(config)
    tasks.register(app)
    _import_task_modules(config)
    return app


def make_control_app(config):
    """Given a Config, return a Celery app with json-only, late-ack, durable, confirmed
    messaging and no task imported: enough to control, inspect and ping the workers without
    running operator code."""
    app = Celery("celeryd", set_as_current=True)
    queues = [Queue(name, Exchange(name, type="direct", durable=True), routing_key=name,
                    durable=True) for name in config.worker.queues]
    app.conf.update(
        broker_url=config.broker_url(masked=False),
        broker_connection_timeout=config.broker.connect_timeout,
        broker_heartbeat=config.broker.heartbeat,
        broker_use_ssl=ssl_options(config.broker) or None,
        # Keep retrying a broker that is down at start or goes away: systemd should see a
        # worker waiting, not a crash loop.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Every publish waits for the broker's confirm: a task accepted is a task stored.
        broker_transport_options={"confirm_publish": True},
        result_backend="rpc://",
        result_persistent=True,
        result_expires=config.results.expires,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Ack after the task ran, and requeue when its child dies: nothing in flight is lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_delivery_mode="persistent",
        task_queues=queues,
        task_default_queue=config.worker.queues[0],
        task_create_missing_queues=False,
        task_time_limit=config.tasks.time_limit,
        worker_prefetch_multiplier=config.worker.prefetch_multiplier,
        worker_concurrency=config.worker.concurrency,
        worker_send_task_events=False,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=True,
        enable_utc=True,
    )
    return app


def _import_task_modules(config):
    """Import the operator's task modules so their @shared_task functions register."""
    for directory in reversed(config.tasks.pythonpath):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    for module in config.tasks.modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - any import failure is a config problem
            raise ConfigError(f"celeryd: tasks.modules: cannot import '{module}': "
                              f"{type(error).__name__}: {error}") from None


def __getattr__(name):
    # `celery -A celeryd_pkg.app` looks up `app`; build it only then, from the installed config.
    if name == "app":
        global app
        app = make_app(config_module.load())
        return app
    raise AttributeError(name)
