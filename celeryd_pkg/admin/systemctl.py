"""The one place celeryd-admin asks systemd anything: quietly, and only when systemd runs."""

import subprocess
from pathlib import Path

__all__ = ["running", "is_active", "restart", "stop", "start", "daemon_reload"]


def running(root="/"):
    """Whether systemd is this machine's init (so there is a manager to ask)."""
    return str(root) == "/" and Path("/run/systemd/system").exists()


def _systemctl(*args):
    return subprocess.run(["systemctl", *args], capture_output=True, text=True)


def is_active(unit):
    """Whether unit is active; False when systemd does not run here."""
    return running() and _systemctl("is-active", "--quiet", unit).returncode == 0


def restart(unit):
    """Restart unit; return whether it worked."""
    return _systemctl("restart", unit).returncode == 0


def stop(unit):
    """Stop unit; return whether it worked."""
    return _systemctl("stop", unit).returncode == 0


def start(unit):
    """Start unit; return whether it worked."""
    return _systemctl("start", unit).returncode == 0


def daemon_reload(root="/"):
    """Make systemd re-read unit files and drop-ins, when it runs here (best effort)."""
    if running(root):
        _systemctl("daemon-reload")
