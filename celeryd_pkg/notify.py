"""A silent sd_notify wrapper: never raises into the worker, speaks only from the main process."""

import logging
import os
import time

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)

# A send waits at most this long for room in the socket, then the update is dropped: the
# event loop must never stall on a reader that has fallen behind (or is not systemd at all).
SEND_TIMEOUT = 0.1


class Notifier:
    """Sends sd_notify datagrams to systemd when NOTIFY_SOCKET is set; a no-op otherwise."""

    def __init__(self, env=os.environ):
        self.socket_path = env.get("NOTIFY_SOCKET")
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process systemd expects pings from; if it is not us, don't.
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_seconds = int(watchdog_usec) / 1e6 if watchdog_usec.isdigit() and mine else 0
        self.main_pid = os.getpid()
        self._notifier = None

    @property
    def enabled(self):
        return bool(self.socket_path)

    def send(self, *fields):
        """Send fields such as "READY=1", "STATUS=..." as one datagram; log failures at debug."""
        if not self.socket_path or os.getpid() != self.main_pid:
            return
        try:
            if self._notifier is None:
                import sdnotify

                self._notifier = sdnotify.SystemdNotifier(debug=True)
                if self._notifier.socket is not None:
                    self._notifier.socket.settimeout(SEND_TIMEOUT)
            # sdnotify encodes as Latin-1; systemd reads UTF-8 (a queue may be named "队列").
            self._notifier.notify("\n".join(fields).encode("utf-8").decode("latin-1"))
        except Exception:  # noqa: BLE001 - notification must never break the worker
            logger.debug("sd_notify failed", exc_info=True)

    def ready(self, status):
        self.send("READY=1", "STATUS=" + status)

    def status(self, status):
        self.send("STATUS=" + status)

    def reloading(self):
        monotonic_usec = int(time.monotonic() * 1e6)
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=Reloading")

    def stopping(self):
        self.send("STOPPING=1", "STATUS=Stopping: finishing tasks in flight")

    def watchdog(self):
        self.send("WATCHDOG=1")
