"""Parsed config files, cached by content, so that a cold celery-submit does without yaml.

Importing PyYAML costs celery-submit about half a MiB and a few milliseconds on every run, for
files that rarely change. So the data parsed from each YAML file is kept in one JSON file,
keyed by a BLAKE2b hash of the file's text: an edited file simply misses and is parsed again.
Only root writes the cache and readers trust it only when root owns it and nobody else can
write it, so no account can feed another's celery-submit a config. Data holding a password
is never cached: the secret stays in the credentials file alone (which celeryd writes as
JSON, read without yaml by validate.py); nor is a file not readable by all (validate.py),
since anyone may read the cache.
"""

import json
import os

from celeryd_pkg import files
from celeryd_pkg.errors import ConfigError

__all__ = ["PATH", "LIMIT", "lookup", "remember", "save", "digest"]

PATH = "/var/cache/celeryd/parsed-config.json"
LIMIT = 64  # entries kept: every file of a few configs, instances and overlays

_entries = None  # {digest: data}, read on first use
_changed = False


def digest(text):
    """BLAKE2b of text. From _blake2, the module hashlib takes it from: importing hashlib
    also sets up OpenSSL's digests, 0.8 MiB of celery-submit's memory (measured)."""
    try:
        from _blake2 import blake2b
    except ImportError:  # a Python whose hashlib finds BLAKE2 elsewhere
        from hashlib import blake2b
    return blake2b(text.encode("utf-8"), digest_size=32).hexdigest()


def _read(path):
    """The cached entries at path, or {} when it is missing, unreadable, not JSON, or could
    have been written by anyone but root."""
    try:
        with open(path, encoding="utf-8") as file:
            status = os.fstat(file.fileno())
            if status.st_uid != 0 or status.st_mode & 0o022:
                return {}
            entries = json.load(file)
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def lookup(text, path=None):
    """Return (True, data) if text's parse is cached, else (False, None)."""
    global _entries
    if _entries is None:
        _entries = _read(path or PATH)
    key = digest(text)
    return (True, _entries[key]) if key in _entries else (False, None)


def _holds_password(data):
    return isinstance(data, dict) and any(
        isinstance(body, dict) and body.get("password") not in (None, "")
        for body in data.values())


def remember(text, data):
    """Keep data as text's parse, unless it holds a password or is not plain JSON data
    (a YAML date, say), which the cache could not give back unchanged."""
    global _entries, _changed
    if _entries is None or _holds_password(data):
        return
    try:
        if json.loads(json.dumps(data)) != data:
            return
    except (TypeError, ValueError):
        return
    _entries[digest(text)] = data
    _changed = True


def save(path=None):
    """Write the cache if this process added to it and runs as root; the newest LIMIT
    entries are kept. A cache that cannot be written is no error: the next run parses."""
    global _changed
    if not _changed or os.geteuid() != 0:
        return
    path = path or PATH
    kept = dict(list(_entries.items())[-LIMIT:])
    try:
        files.replace(path, json.dumps(kept, sort_keys=True), mode=0o644)
    except ConfigError:
        return
    _changed = False
