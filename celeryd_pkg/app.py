"""Build the Celery app from celeryd's config, with the reliable settings always on.

`celery -A celeryd_pkg.app inspect ping` (and Flower) work with the same config and
credentials, so operators keep the Celery tooling they know. The control-only app (no task
code imported) serves celeryd-admin and `celery -A celeryd_pkg.admin.control inspect ...`.
"""

import importlib
import sys

from celery import Celery, current_task, signals

from celeryd_pkg import config as config_module
from celeryd_pkg.errors import ConfigError
from celeryd_pkg.protocol import REPLY_TO as DIRECT_REPLY_TO
from celeryd_pkg.settings import celery_settings, lazy_app

__all__ = ["make_app", "make_control_app", "node_name", "app"]


def node_name(config, instance=None):
    """Return the worker's node name: worker.name, else NAME@HOST (celery@HOST by default)."""
    import socket

    return config.worker.name or f"{instance or 'celery'}@{socket.gethostname()}"


def make_app(config, instance=None):
    """Given a Config (and the worker's --instance), return the worker's Celery app: the
    control app's settings, the built-in tasks, the operator's task modules, the task counts
    and the celeryd_status command. Raise ConfigError if a task module cannot be imported."""
    from celeryd_pkg import panel, poison, tally, tasks

    # First: the counts' directory must be set before any task module imports
    # prometheus_client. Signals count every task, whatever its base class.
    tally.install(config)
    app = make_control_app(config)
    panel.install(app, config, instance)
    tasks.register(app)
    _import_task_modules(config)
    # Last, so that every task is covered, whatever its base class: a task whose child dies
    # on each delivery goes to celeryd.dead after tasks.max_redeliveries.
    poison.install(app, config)
    signals.before_task_publish.connect(_keep_direct_reply_to, weak=False)
    return app


def _keep_direct_reply_to(properties=None, **_):
    """A task sent by a task (a chain's next step) replies where its caller's result went.
    Clients take results on RabbitMQ's direct reply-to: Celery copies the bare
    'amq.rabbitmq.reply-to' into the next message, which the broker refuses from a channel
    that does not consume it; the caller's own address (as delivered to us) works anywhere."""
    if properties and properties.get("reply_to") == DIRECT_REPLY_TO:
        request = getattr(current_task, "request", None)
        origin = getattr(request, "reply_to", None) or ""
        if origin.startswith(DIRECT_REPLY_TO + "."):
            properties["reply_to"] = origin


def make_control_app(config):
    """Given a Config, return a Celery app with json-only, late-ack, durable, confirmed
    messaging and no task imported: enough to control, inspect and ping the workers without
    running operator code."""
    app = Celery("celeryd", set_as_current=True)
    app.conf.update(celery_settings(config))
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


# `celery -A celeryd_pkg.app` looks up `app`; built only then, from the installed config.
app: object  # declared for __all__; lazy_app sets it on first use
__getattr__ = lazy_app(globals(), lambda: make_app(config_module.load()))
