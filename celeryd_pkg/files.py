"""Replace a small root-owned, world-readable file atomically (a CA certificate, a drop-in)."""

import os
from pathlib import Path

from celeryd_pkg.errors import ConfigError

__all__ = ["replace"]


def replace(path, text, prog="celeryd-admin"):
    """Write text to path through a temporary file beside it, mode 0644: readers see the
    old file or the new one, never half of one. Raise ConfigError naming path on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as error:
        raise ConfigError(f"{prog}: cannot write {path} ({error.strerror}); run as "
                          f"root") from None
