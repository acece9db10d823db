"""The worker's Prometheus endpoint (metrics.enabled): http://metrics.listen/metrics.

Served by prometheus_client's own WSGI server from a daemon thread of the worker's main
process. The task counts are tally's files (every process of the pool, summed by
MultiProcessCollector); the worker's state and the queue lengths are read at each scrape.
A port already in use costs the metrics, never the worker.
"""

import logging
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from celery import signals
from celery.worker import state as worker_state

from celeryd_pkg import tally
from celeryd_pkg.schema import split_listen

__all__ = ["serve", "registry", "WorkerCollector", "queue_lengths"]

logger = logging.getLogger("celeryd.metrics")


class QuietHandler(WSGIRequestHandler):
    """No access log: a scrape every 15 s would fill the journal."""

    def log_message(self, *_):
        pass


class WorkerCollector:
    """celery_worker_up, celery_worker_tasks_active and celery_queue_length, as
    celery-exporter names and labels them, read when Prometheus scrapes."""

    def __init__(self, config, monitor=None, lengths=None):
        self.config = config
        self.monitor = monitor
        self.lengths = lengths or queue_lengths

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        hostname = tally.hostname()
        # Up while connected to the broker (celery-exporter: a recent heartbeat).
        connected = self.monitor is None or self.monitor.connected
        up = GaugeMetricFamily("celery_worker_up",
                               "Indicates if a worker has recently sent a heartbeat.",
                               labels=["hostname"])
        up.add_metric([hostname], 1 if connected else 0)
        yield up
        active = GaugeMetricFamily("celery_worker_tasks_active",
                                   "The number of tasks the worker is currently processing",
                                   labels=["hostname"])
        active.add_metric([hostname], len(worker_state.active_requests))
        yield active
        length = GaugeMetricFamily("celery_queue_length",
                                   "The number of message in broker queue.",
                                   labels=["queue_name"])
        for name, count in self.lengths(self.config, self.config.worker.queues).items():
            length.add_metric([name], count)
        yield length


def queue_lengths(config, queues):
    """Return {queue: ready messages} by passive queue.declare (broker.queue_depths); {} when
    the broker cannot be asked now: the scrape then has no celery_queue_length, rather than
    a wrong 0. A queue the broker does not have is left out."""
    from celeryd_pkg import broker

    try:
        connection = broker.connect(config)
    except Exception as error:  # noqa: BLE001 - a scrape must not fail on the broker
        logger.debug("metrics: no queue lengths: %s", getattr(error, "message", error))
        return {}
    try:
        depths = broker.queue_depths(connection, queues)
    except Exception as error:  # noqa: BLE001 - the broker went away mid-scrape
        logger.debug("metrics: no queue lengths: %s", error)
        return {}
    finally:
        broker.close(connection)
    return {name: depth.ready for name, depth in depths.items() if depth is not None}


def registry(config, monitor=None, path=None, lengths=None):
    """Return a fresh CollectorRegistry: every process's task counts plus the worker's state."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    result = CollectorRegistry()
    MultiProcessCollector(result, path=path or tally.directory())
    result.register(WorkerCollector(config, monitor, lengths))
    return result


def serve(config, monitor=None):
    """Serve /metrics on metrics.listen from a daemon thread; return the server, or None
    (with one log line) when the address cannot be bound: the worker runs on without."""
    from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

    listen = config.metrics.listen
    host, port = split_listen(listen)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
        server = make_server(host, port, make_wsgi_app(registry(config, monitor)),
                             server_class, handler_class=QuietHandler)
    except OSError as error:
        reason = error.strerror or str(error)
        logger.error("metrics: cannot listen on %s (metrics.listen): %s; the worker runs "
                     "without metrics", listen, reason)
        return None
    # Pool children are forked from this process: they must not hold the port open.
    signals.worker_process_init.connect(lambda **_: server.socket.close(), weak=False,
                                        dispatch_uid="celeryd.metrics.close")
    threading.Thread(target=server.serve_forever, name="celeryd-metrics", daemon=True).start()
    logger.info("metrics: serving http://%s/metrics", listen)
    return server
