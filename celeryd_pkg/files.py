"""The one atomic writer for every file celeryd writes: credentials, CA, keys, drop-ins, conf."""

import contextlib
import os

from celeryd_pkg.errors import ConfigError

__all__ = ["replace", "staged", "remove"]


@contextlib.contextmanager
def staged(path, data, prog="celeryd-admin", mode=0o644, gid=None, uid=0):
    """Write data (text or bytes) to a new temporary file beside path, owned uid:gid (gid
    given; uid root by default) with its final mode before a byte is written, and fsynced; yield its path; rename it
    over path when the block succeeds. On any failure path is left as it was and the temporary
    file removed, so readers see the old file or the new one, never half of one, and a secret
    is never readable by anyone it is not for. Raise ConfigError naming path on failure."""
    import secrets  # here: celery-submit imports this module and never writes
    from pathlib import Path

    path = Path(path)
    # A random name with O_EXCL|O_NOFOLLOW: a planted file or symlink can't catch the data.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    data = data.encode("utf-8") if isinstance(data, str) else data
    created = False
    try:
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            created = True
            try:
                if gid is not None:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise ConfigError(f"{prog}: cannot write {path} ({error.strerror or error}); "
                              f"run as root") from None
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError as error:
            # The caller may already have acted on the new content (a broker password):
            # keep the only copy of it.
            created = False
            raise ConfigError(f"{prog}: cannot replace {path} ({error.strerror}); the new "
                              f"content is in {tmp}") from None
        created = False
        _fsync_dir(path.parent)
    finally:
        if created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def replace(path, data, prog="celeryd-admin", mode=0o644, gid=None, uid=0):
    """Atomically replace path with data (see staged)."""
    with staged(path, data, prog, mode, gid, uid):
        pass


def remove(path, prog="celeryd-admin"):
    """Remove path durably; return whether it existed. Raise ConfigError naming path if it
    cannot be removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise ConfigError(f"{prog}: cannot remove {path} ({error.strerror}); run as "
                          f"root") from None
    from pathlib import Path

    _fsync_dir(Path(path).parent)
    return True


def _fsync_dir(directory):
    """Make a rename or unlink in directory survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
