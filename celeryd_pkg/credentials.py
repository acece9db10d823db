"""The broker credentials file: read it, and replace it atomically with its final owner and mode."""

import contextlib
import grp
import os
import secrets
from pathlib import Path

from celeryd_pkg.errors import ConfigError

__all__ = ["MODE", "read", "render", "resolve_group", "staged", "locked", "write", "remove"]

# root:GROUP 0640: the workers (group celery) read it, nobody else does.
MODE = 0o640
# Only these keys, in this order; the loader accepts nothing else in this file.
KEYS = ("host", "port", "vhost", "user", "password", "tls", "ca_file", "server_name",
        "allow_plain")


def resolve_group(name):
    """Given a group name, return its gid. Raise ConfigError if the group does not exist."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"celeryd-admin: group '{name}' does not exist: install the celeryd "
                          f"package or pass --group") from None


def read(path):
    """Given the credentials file path, return its broker mapping ({} if the file is missing).
    Raise ConfigError naming the file if it is unreadable or malformed (the config loader's
    own checks: one reader for the worker, the client and the admin)."""
    from celeryd_pkg.config import read_credentials

    return read_credentials(path)


def render(broker):
    """Given a broker mapping, return the credentials file's text (YAML, fixed key order)."""
    import yaml

    body = {key: broker[key] for key in KEYS if broker.get(key) is not None}
    return ("# Broker credentials for celeryd, written by celeryd-admin (root:celery 0640).\n"
            "# Not a conffile: celeryd-admin provision, join and rotate-password rewrite it.\n"
            + yaml.safe_dump({"broker": body}, default_flow_style=False, sort_keys=False))


@contextlib.contextmanager
def staged(path, broker, gid, uid=0):
    """Write broker to a temporary file beside path, owned uid:gid with mode 0640 before a
    byte of it is written, and fsynced; yield its path; rename it over path when the block
    succeeds. On any failure the old file is left as it was and the temporary file removed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    data = render(broker).encode("utf-8")
    created = False
    try:
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            # 0600 at creation whatever the umask allows; owner, group and the final 0640 are
            # set on the empty file, so the secret is never readable by anyone it is not for.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            created = True
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, MODE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise ConfigError(f"celeryd-admin: cannot write {path} ({error.strerror or error}); "
                              f"run as root") from None
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError as error:
            # The broker may already have the new password: keep the only copy of it.
            created = False
            raise ConfigError(f"celeryd-admin: cannot replace {path} ({error.strerror}); "
                              f"the new credentials are in {tmp}") from None
        created = False
        _fsync_dir(path.parent)
    finally:
        if created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive lock on the credentials file's directory for a read-modify-write."""
    import fcntl

    directory = Path(path).parent
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise ConfigError(f"celeryd-admin: cannot open {directory} ({error.strerror}); "
                          f"run as root") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write(path, broker, gid, uid=0):
    """Atomically replace the credentials file at path with broker (see staged)."""
    with staged(path, broker, gid, uid):
        pass


def remove(path):
    """Remove the credentials file; return whether it existed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise ConfigError(f"celeryd-admin: cannot remove {path} ({error.strerror}); "
                          f"run as root") from None
    _fsync_dir(Path(path).parent)
    return True


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
