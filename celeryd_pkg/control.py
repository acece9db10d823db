"""Drain and resume a running worker through Celery's remote control (the pidbox).

Draining cancels the worker's consumers: it takes no new tasks while those in flight finish,
so a host can be taken out for maintenance without losing or interrupting work (as Sidekiq's
"quiet"). `resume`, a restart or a reload undoes it.
"""

from celeryd_pkg.errors import CelerydError

__all__ = ["drain", "resume", "REPLY_TIMEOUT"]

REPLY_TIMEOUT = 5.0


class WorkerNotAnswering(CelerydError):
    """The named worker did not confirm the command: it is not running, or not here."""

    exit_code = 1


def drain(config, node, timeout=REPLY_TIMEOUT):
    """Tell worker node to stop consuming its queues; return the queues it stopped."""
    return _each_queue(config, node, "cancel_consumer", timeout)


def resume(config, node, timeout=REPLY_TIMEOUT):
    """Tell worker node to consume its configured queues again; return them."""
    return _each_queue(config, node, "add_consumer", timeout)


def _each_queue(config, node, command, timeout):
    from celeryd_pkg import broker
    from celeryd_pkg.app import make_app

    app = make_app(config)
    try:
        for queue in config.worker.queues:
            replies = app.control.broadcast(command, arguments={"queue": queue},
                                            destination=[node], reply=True, timeout=timeout)
            if not any(node in reply for reply in replies or ()):
                raise WorkerNotAnswering(
                    f"celeryd-admin: worker {node} did not answer within {timeout:g}s: is it "
                    f"running here? (systemctl status celery-worker; celeryd-admin check)")
    except CelerydError:
        raise
    except Exception as error:  # noqa: BLE001 - translated, never a traceback
        raise broker.translate(error, config) from None
    finally:
        app.close()
    return list(config.worker.queues)
