"""myapp's tasks. The worker imports this module (tasks.modules: [myapp.tasks]); the
application imports it too, to call `add.delay(4, 4)`. From a shell: `celery-submit
myapp.tasks.add 4 4`. @shared_task binds each task to the current app: the worker's there,
celeryd_pkg.client's in the application."""

import time

from celery import shared_task

from myapp import __version__


@shared_task
def add(x, y):
    return x + y


@shared_task
def to_api(payload):
    """Return payload with its keys in camelCase, as a JSON API wants them."""
    # camel_converter comes from PyPI (camel-converter, not packaged by Debian), installed in
    # the venv of tasks.virtualenv. Imported here, when the task runs, so the application may
    # import this module to call add.delay() without that venv.
    from camel_converter import dict_to_camel

    return dict_to_camel(payload)


@shared_task
def version(seconds=0):
    """Work for `seconds`, then return the version of myapp that ran it."""
    time.sleep(seconds)
    return __version__
