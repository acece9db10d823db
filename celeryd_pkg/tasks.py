"""Built-in tasks under stable names, for smoke tests, demos and health checks."""

import time

from celeryd_pkg.protocol import NAMESPACE

__all__ = ["NAMESPACE", "register"]


def add(x, y):
    return x + y


def mul(x, y):
    return x * y


def xsum(numbers):
    return sum(numbers)


def echo(value):
    return value


def sleep(seconds):
    """Sleep, then return the seconds slept: a stand-in for a long task."""
    time.sleep(seconds)
    return seconds


BUILTINS = (add, mul, xsum, echo, sleep)


def register(app):
    """Register every built-in task on app under NAMESPACE."""
    for func in BUILTINS:
        # shared=False: Celery would otherwise add them to every app built later in this
        # process, the control-only one too.
        app.task(name=NAMESPACE + func.__name__, shared=False)(func)
