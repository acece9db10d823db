"""Replace a small root-owned file atomically (a CA certificate, a key, a drop-in)."""

import contextlib
import os
from pathlib import Path

from celeryd_pkg.errors import ConfigError

__all__ = ["replace"]


def replace(path, data, prog="celeryd-admin", mode=0o644, gid=None):
    """Write data (text or bytes) to path through a temporary file beside it that has its
    final mode (and group gid, if given) before a byte is written: readers see the old file
    or the new one, never half of one, and a key is never readable by anyone else. Raise
    ConfigError naming path on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    data = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            if gid is not None:
                os.fchown(f.fileno(), 0, gid)
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except OSError as error:
        raise ConfigError(f"{prog}: cannot write {path} ({error.strerror}); run as "
                          f"root") from None
