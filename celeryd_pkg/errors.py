"""Errors users see: each names what failed and carries its exit code."""

__all__ = [
    "CelerydError", "TaskFailed", "UsageError", "ConfigError",
    "BrokerUnreachable", "TlsFailed", "AccessRefused", "LoginRefused", "VhostRefused", "ResultTimeout",
    "report",
]


class CelerydError(Exception):
    """Base of every error a command reports as one line and an exit code, never a traceback."""

    exit_code = 1

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class TaskFailed(CelerydError):
    """The task ran and raised."""

    exit_code = 1


class UsageError(CelerydError):
    """Bad arguments or input."""

    exit_code = 2


class ConfigError(CelerydError):
    """A configuration file or setting is unreadable or invalid."""

    exit_code = 3


class BrokerUnreachable(CelerydError):
    """No connection to the broker (DNS, TCP, or the broker itself)."""

    exit_code = 4


class TlsFailed(BrokerUnreachable):
    """The TLS handshake with the broker failed (untrusted certificate, wrong port): retrying
    will not help, the configuration must change."""


class AccessRefused(CelerydError):
    """The broker refused the login or the vhost/queue permission."""

    exit_code = 5


class LoginRefused(AccessRefused):
    """The broker refused the user name or password."""


class VhostRefused(AccessRefused):
    """The broker accepted the login but refused the user its vhost."""


class ResultTimeout(CelerydError):
    """The task was sent but no result came back in time."""

    exit_code = 6


def report(error, prog):
    """Print error's message to stderr, each line prefixed with prog unless it already names
    a program; return its exit code."""
    import sys

    for line in error.message.splitlines():
        if not line.startswith(("celeryd:", "celery-submit:", "celeryd-admin:")):
            line = f"{prog}: {line}"
        print(line, file=sys.stderr)
    return error.exit_code
