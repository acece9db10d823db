"""The worker daemon: `python3 -m celeryd_pkg.worker`, run by celery-worker.service."""

import argparse
import atexit
import logging
import os
import sys

from celeryd_pkg import config as config_module
from celeryd_pkg import dropins, virtualenv
from celeryd_pkg.errors import CelerydError, report
from celeryd_pkg.notify import Notifier

__all__ = ["main"]

logger = logging.getLogger("celeryd.worker")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="celeryd-worker",
        description="Run a Celery worker configured from /etc/celeryd (systemd Type=notify).")
    parser.add_argument("--config", metavar="FILE",
                        help="main config file (default /etc/celeryd/celeryd.yaml)")
    parser.add_argument("--instance", metavar="NAME",
                        help="named worker: also reads conf.d/@NAME.yaml, node name NAME@host")
    parser.add_argument("-c", "--concurrency", type=int, help="number of child processes")
    parser.add_argument("-Q", "--queues", help="comma-separated queues to consume")
    parser.add_argument("-l", "--loglevel", help="debug, info, warning, error or critical")
    return parser.parse_args(argv)


def load_config(args):
    """Load and check the config: at start, and at reload before anything is stopped."""
    overrides = {("worker", "concurrency"): args.concurrency,
                 ("worker", "queues"): args.queues,
                 ("worker", "loglevel"): args.loglevel}
    config = config_module.load(args.config, overrides, instance=args.instance)
    if config.tasks.virtualenv:
        virtualenv.check(config.tasks.virtualenv)
    return config


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # Before anything imports prometheus_client: the pool's task counts live there.
    from celeryd_pkg import tally

    tally.prepare_directory()
    try:
        config = load_config(args)
        warning = config.plain_remote_warning()
        if warning:
            print(warning, file=sys.stderr, flush=True)
        _refuse_bad_login(config)
        # Before make_app imports tasks.modules, which may import the venv's packages.
        virtualenv.activate(config, warn=lambda line: print(line, file=sys.stderr, flush=True))
        from celeryd_pkg.app import make_app, node_name

        app = make_app(config, args.instance)
        if config.worker.send_events:
            # Tasks this worker publishes (a chain's next step, a retry) send task-sent too.
            # Only in the worker: a client-role account may not publish to the event exchange.
            app.conf.task_send_sent_event = True
            _unconfirmed_events(app)
    except CelerydError as error:
        # One line in the journal, then a distinct exit code: never run on defaults.
        return report(error, "celeryd")

    from celeryd_pkg.monitor import Monitor, Readiness
    from celeryd_pkg.stopping import FinishBeforeStop, GentleStop

    monitor = Monitor(config, Notifier())
    app.celeryd_monitor = monitor
    app.steps["consumer"].add(Readiness)
    gentle_stop = app.celeryd_gentle_stop = GentleStop(monitor)
    app.steps["consumer"].add(FinishBeforeStop)
    worker = _worker_class(app, monitor, gentle_stop, args, argv)(
        hostname=node_name(config, args.instance),
        pool_cls="prefork",
        concurrency=config.worker.concurrency,
        queues=list(config.worker.queues),
        loglevel=config.worker.loglevel.upper(),
        # Mingle waits a second for replies nobody sends and gossip is for workers watching
        # each other: both only delay READY=1. Heartbeat events go with worker.send_events
        # (Flower shows a worker without them offline); with neither, Celery's event
        # dispatcher stays disabled, so a remote enable_events (Flower sends one every 5 s)
        # cannot turn task events on behind the config's back.
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=not config.worker.send_events,
    )
    _answer_event_commands()
    # After the Worker set up logging, before the pool forks its children.
    from celeryd_pkg import journal

    journal.install()
    if not config.worker.log_tasks:
        _quiet_task_lines()
    if config.metrics.enabled:
        from celeryd_pkg import metrics

        # After the Worker set up logging, before the pool forks its children.
        metrics.serve(config, monitor)
    monitor.start_pinger()
    worker.start()
    return worker.exitcode


def _unconfirmed_events(app):
    """Have the worker's event dispatcher publish without broker confirms: each confirm is a
    round trip in the worker's event loop, three per task, and an event lost in a broker
    crash costs a monitor one line, never a task."""
    from celery.events.dispatcher import EventDispatcher

    class Dispatcher(EventDispatcher):
        def __init__(self, connection=None, hostname=None, enabled=True, channel=None,
                     *args, **kwargs):
            # The consumer's Events step hands over a connection of its own (a producer
            # pool's channel comes with one; left as it is).
            if connection is not None and channel is None:
                options = dict(connection.transport_options or {}, confirm_publish=False)
                unconfirmed = connection.clone(transport_options=options)
                connection.release()
                connection = unconfirmed
            super().__init__(connection, hostname, enabled, channel, *args, **kwargs)

    app.events.dispatcher_cls = Dispatcher


def _answer_event_commands():
    """Flower asks every worker to enable task events every 5 s, and it and `celery events`
    ask for a heartbeat when they start. Celery's handlers raise on a worker that sends no
    events (a traceback in the journal each time): such a worker answers why instead."""
    from celery.worker import control

    def answering(handler):
        def answer(state, **arguments):
            if state.consumer.event_dispatcher is None:
                return control.nok("task events are off in this worker (worker.send_events)")
            return handler(state, **arguments)
        return answer

    for name in ("enable_events", "disable_events", "heartbeat"):
        control.Panel.data[name] = answering(control.Panel.data[name])


def _quiet_task_lines():
    """Drop Celery's per-task info lines: "received" (worker.strategy, main process) and
    "succeeded"/"retry" (app.trace, inherited by the pool's children). Errors stay."""
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _refuse_bad_login(config):
    """Raise AccessRefused if the broker rejects our login or vhost, TlsFailed if its
    certificate is not trusted: Celery would log a traceback and retry forever. An
    unreachable broker is fine here: the worker waits for it."""
    from celeryd_pkg import broker
    from celeryd_pkg.errors import AccessRefused, TlsFailed

    try:
        broker.connect(config).collect()
    except (AccessRefused, TlsFailed):
        raise
    except CelerydError:
        pass


def _worker_class(app, monitor, gentle_stop, args, argv):
    """Return app.Worker extended with STATUS= while connecting, SIGHUP as reload, and a
    SIGTERM that acknowledges every task in flight before Celery's warm stop."""

    class Worker(app.Worker):
        def on_start(self):
            monitor.waiting()
            super().on_start()

        def install_platform_tweaks(self, worker):
            super().install_platform_tweaks(worker)
            from celery import platforms

            gentle_stop.wrap(platforms.signals, "SIGTERM")
            _install_reload_handler(monitor, gentle_stop, args, argv)

    return Worker


def _install_reload_handler(monitor, gentle_stop, args, argv):
    """SIGHUP: check the new config, then finish tasks in flight and re-execute ourselves.
    An invalid config is refused and the worker keeps running on the old one."""
    from celery import platforms
    from celery.worker import state

    def on_sighup(*_):
        try:
            new_config = load_config(args)
        except CelerydError as error:
            logger.error("Reload refused, still running the previous config: %s",
                         error.message.replace("\n", "; "))
            return
        # Unit settings (outbound, memory) come from the generator, not from a reload.
        warning = dropins.reload_warning(monitor.config, new_config, args.instance)
        if warning:
            logger.warning(warning)
        logger.warning("Reloading: finishing tasks in flight, then restarting with new config")
        monitor.reloading = True
        monitor.notifier.reloading()
        atexit.register(_reexec, argv)
        gentle_stop.request(lambda: setattr(state, "should_stop", 0))

    platforms.signals["SIGHUP"] = on_sighup


def _reexec(argv):
    from celery import platforms

    platforms.close_open_fds([sys.__stdin__, sys.__stdout__, sys.__stderr__])
    os.execv(sys.executable, [sys.executable, "-m", "celeryd_pkg.worker", *argv])


if __name__ == "__main__":
    sys.exit(main())
