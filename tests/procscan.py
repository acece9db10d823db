"""Watch every process's /proc entries while a test runs: where a secret would leak."""

import os
import threading
import time

__all__ = ["ProcScanner"]


class ProcScanner(threading.Thread):
    """Read /proc/*/cmdline (and the other files asked for, such as environ) of every process
    but our own every few ms, into seen (a set of bytes), until stop()."""

    def __init__(self, files=("cmdline",), interval=0.003):
        super().__init__(daemon=True)
        self.files, self.interval = files, interval
        self.seen, self.rounds, self.done = set(), 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == os.getpid():
                    continue
                for name in self.files:
                    try:
                        with open(f"/proc/{pid}/{name}", "rb") as f:
                            self.seen.add(f.read())
                    except OSError:
                        pass
            self.rounds += 1
            time.sleep(self.interval)

    def stop(self):
        self.done.set()
        self.join()
