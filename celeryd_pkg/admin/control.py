"""celeryd-admin drain and resume: a running worker stops or restarts taking tasks.

Draining cancels the worker's consumers through Celery's remote control (the pidbox): it takes
no new tasks while those in flight finish, so a host can be taken out for maintenance without
losing or interrupting work (as Sidekiq's "quiet"). `resume`, a restart or a reload undoes it.
The app used here is the control-only one: no operator task code is imported, so
`celery -A celeryd_pkg.admin.control inspect active` works even when a task module is broken.
"""

from celeryd_pkg import config as config_module
from celeryd_pkg.admin.cli import Command, config_option
from celeryd_pkg.errors import CelerydError
from celeryd_pkg.settings import lazy_app

__all__ = ["drain", "resume", "consumers_named", "REPLY_TIMEOUT", "COMMANDS", "app"]

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
    from celeryd_pkg.app import make_control_app

    app = make_control_app(config)
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


def consumers_named(settings, queue, timeout):
    """Return the names of the workers that say they consume queue, or [] when this account
    may not ask (a submit-only client cannot publish to the workers' control exchange)."""
    from celeryd_pkg.app import make_control_app

    try:
        app = make_control_app(settings)
        try:
            replies = app.control.inspect(timeout=timeout).active_queues() or {}
        finally:
            app.close()
    except Exception:  # noqa: BLE001 - naming the workers is a bonus; counting them sufficed
        return []
    return sorted(node for node, queues in replies.items()
                  if any(q.get("name") == queue for q in queues or ()))


def action_drain_or_resume(args):
    from celeryd_pkg.app import node_name

    settings = config_module.load(args.config, instance=args.instance)
    node = node_name(settings, args.instance)
    queues = ", ".join((drain if args.command == "drain" else resume)(settings, node))
    if args.command == "drain":
        print(f"{node}: draining: no new tasks from {queues}; tasks in flight finish "
              f"(celeryd-admin resume{' ' + args.instance if args.instance else ''} undoes it)")
    else:
        print(f"{node}: consuming from {queues} again")
    return 0


def _arguments(parser):
    parser.add_argument("instance", nargs="?", metavar="NAME",
                        help="the worker instance celery-worker@NAME (default: celery-worker)")
    config_option(parser)


COMMANDS = (
    Command("drain", "make the running worker on this host take no new tasks while those in "
                     "flight finish (before maintenance)", action_drain_or_resume, _arguments),
    Command("resume", "make a drained worker take tasks again", action_drain_or_resume,
            _arguments),
)


def _build_control_app():
    from celeryd_pkg.app import make_control_app

    return make_control_app(config_module.load())


# `celery -A celeryd_pkg.admin.control` looks up `app`: the control-only app, built then.
app: object  # declared for __all__; lazy_app sets it on first use
__getattr__ = lazy_app(globals(), _build_control_app)
