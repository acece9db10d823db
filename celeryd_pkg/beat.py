"""celery-beat.service's program: `python3 -m celeryd_pkg.beat` (systemd Type=notify)."""

import argparse
import json
import logging
import os
import signal
import sys

from celeryd_pkg import config as config_module
from celeryd_pkg.errors import CelerydError, report
from celeryd_pkg.notify import Notifier

__all__ = ["main", "LocalState"]

logger = logging.getLogger("celeryd.beat")

# systemd's syslog priorities for Python's levels: the journal shows warnings and errors as such.
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
              logging.CRITICAL: 2}


class LocalState:
    """The leader's last state, also kept in the StateDirectory: the same host taking the lead
    again knows what it sent even when the broker lost its record."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "beat-state.json")

    def fired(self):
        """{entry: last slot} of the file, made safe as the broker's state is."""
        from celeryd_pkg.leader import clean_state

        try:
            with open(self.path, encoding="utf-8") as file:
                state = clean_state(json.load(file))
        except (OSError, ValueError):
            return {}
        return state["fired"] if state else {}

    def save(self, state):
        from celeryd_pkg import files

        try:
            files.replace(self.path, json.dumps(state, sort_keys=True) + "\n",
                          prog="celery-beat", mode=0o640)
        except CelerydError as error:  # the broker's record is the one that matters
            logger.warning("%s", error.message)


class JournalPriority(logging.Formatter):
    def format(self, record):
        return f"<{PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="celery-beat",
        description="Send the periodic tasks of beat.entries, one scheduler in the fleet at "
                    "a time (systemd Type=notify).")
    parser.add_argument("--config", metavar="FILE",
                        help="main config file (default /etc/celeryd/celeryd.yaml)")
    return parser.parse_args(argv)


def connect(config):
    """A connection with the beat's heartbeat: the broker drops a silent leader by it."""
    from celeryd_pkg import broker

    return broker.connect(config, heartbeat=config.beat.heartbeat)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalPriority("%(message)s") if os.environ.get("JOURNAL_STREAM")
                         else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    def load():
        return config_module.load(args.config)

    try:
        config = load()
        from celeryd_pkg.scheduler import Scheduler

        directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        scheduler = Scheduler(config, Notifier(), connect, load,
                              local_state=LocalState(directory) if directory else None)
    except CelerydError as error:
        return report(error, "celery-beat")

    def stop(signum, frame):
        scheduler.stop_requested = True

    def reload(signum, frame):
        scheduler.reload_requested = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    scheduler.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
