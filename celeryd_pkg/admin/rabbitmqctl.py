"""rabbitmqctl as a subprocess: the broker host's admin tool, a password only ever on stdin."""

import json
import os
import subprocess

from celeryd_pkg.errors import BrokerUnreachable, CelerydError, UsageError

__all__ = ["RABBITMQCTL", "FULL", "NodeDown", "Rabbitmqctl", "check_name"]

RABBITMQCTL = "/usr/sbin/rabbitmqctl"
FULL = (".*", ".*", ".*")
# rabbitmqctl's exit codes (sysexits.h), measured with RabbitMQ 3.10.
EX_DATAERR, EX_NOUSER = 65, 67
# What rabbitmqctl says when there is no node to talk to, or the node's rabbit app is stopped.
NODE_DOWN = ("unable to perform an operation on node", "requires the 'rabbit' app to be running")


class NodeDown(BrokerUnreachable):
    """No local broker to provision: rabbitmqctl is not installed or the node is not running."""


def check_name(kind, name):
    """Raise UsageError unless name is a usable RabbitMQ user or vhost name."""
    if not name or name.startswith("-") or any(c.isspace() or ord(c) < 32 for c in name):
        raise UsageError(f"celeryd-admin: {kind} {name!r}: expected a non-empty name without "
                         f"spaces that does not start with '-'")
    return name


class Rabbitmqctl:
    """rabbitmqctl as a subprocess; a password only ever travels on its stdin."""

    def __init__(self, path=None, env=None, timeout=120):
        environ = os.environ if env is None else env
        self.path = path or environ.get("CELERYD_RABBITMQCTL") or RABBITMQCTL
        self.env = None if env is None else dict(env)
        self.timeout = timeout

    def run(self, *args, secret=None, ok=(0,)):
        """Run `rabbitmqctl [-q] ARGS`, with secret (if any) as the line on stdin. Return the
        CompletedProcess when its exit code is in ok; raise NodeDown when there is no node,
        CelerydError otherwise."""
        stdin = "" if secret is None else secret + "\n"
        # RabbitMQ 4.0 (trixie) never returns from `-q` with a password on stdin; its
        # chatter without -q is captured and dropped.
        quiet = ["-q"] if secret is None else []
        try:
            result = subprocess.run([self.path, *quiet, *args], input=stdin, env=self.env,
                                    capture_output=True, text=True, timeout=self.timeout)
        except FileNotFoundError:
            raise NodeDown(f"celeryd-admin: {self.path} not found: install rabbitmq-server on "
                           f"the broker host, or use celeryd-admin join for a remote broker")
        except PermissionError:
            raise CelerydError(f"celeryd-admin: cannot run {self.path}: permission denied; "
                               f"run as root") from None
        except subprocess.TimeoutExpired:
            raise BrokerUnreachable(f"celeryd-admin: rabbitmqctl {args[0]} did not finish in "
                                    f"{self.timeout}s: is rabbitmq-server healthy?") from None
        if result.returncode in ok:
            return result
        detail = _summary(result.stderr or result.stdout, secret)
        # Not the exit code alone: 69 also means e.g. no_such_user for list_user_permissions.
        if any(text in result.stderr for text in NODE_DOWN):
            raise NodeDown(f"celeryd-admin: rabbitmqctl: {detail.rstrip('.')}: is "
                           f"rabbitmq-server running? (systemctl start rabbitmq-server)")
        raise CelerydError(f"celeryd-admin: rabbitmqctl {args[0]} failed with exit code "
                           f"{result.returncode}: {detail}")

    def _json(self, *args):
        out = self.run(*args, "--formatter", "json").stdout.strip()
        try:
            return json.loads(out) if out else []
        except ValueError:
            raise CelerydError(f"celeryd-admin: rabbitmqctl {args[0]}: unexpected output "
                               f"{_summary(out, None)!r}") from None

    def vhosts(self):
        return {row["name"] for row in self._json("list_vhosts", "name")}

    def users(self):
        return {row["user"] for row in self._json("list_users")}

    def permissions(self, user):
        """Return {vhost: (configure, write, read)} of an existing user."""
        return {row["vhost"]: (row["configure"], row["write"], row["read"])
                for row in self._json("list_user_permissions", user)}

    def add_vhost(self, vhost):
        self.run("add_vhost", vhost)

    def delete_vhost(self, vhost):
        """Delete vhost; return False if it did not exist."""
        result = self.run("delete_vhost", vhost, ok=(0, EX_DATAERR))
        if result.returncode and "does not exist" not in result.stderr:
            raise CelerydError(f"celeryd-admin: rabbitmqctl delete_vhost failed: "
                               f"{_summary(result.stderr, None)}")
        return result.returncode == 0

    def add_user(self, user, password):
        self.run("add_user", user, secret=password)

    def change_password(self, user, password):
        self.run("change_password", user, secret=password)

    def authenticate(self, user, password):
        """Return whether the broker accepts password for user."""
        return self.run("authenticate_user", user, secret=password,
                        ok=(0, EX_DATAERR)).returncode == 0

    def delete_user(self, user):
        """Delete user; return False if it did not exist."""
        return self.run("delete_user", user, ok=(0, EX_NOUSER)).returncode == 0

    def set_permissions(self, vhost, user, permissions=FULL):
        self.run("set_permissions", "-p", vhost, user, *permissions)


def _summary(text, secret):
    """rabbitmqctl's message in one line, with the secret (if ever echoed) masked."""
    if secret:
        text = text.replace(secret, "***")
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and line.strip() not in ("Error:", "Error")]
    line = lines[0] if lines else "no message"
    line = line[len("Error: "):] if line.startswith("Error: ") else line
    line = line.split(". Please see")[0]
    return line if len(line) <= 200 else line[:197] + "..."
