"""tasks.virtualenv: the operator's task dependencies in a venv, added to the worker's sys.path.

The worker runs Debian's /usr/bin/python3 with Debian's celery, never the venv's interpreter:
the venv only contributes its site-packages, appended after Debian's paths, so a package that
Debian ships (celery, kombu, ...) is always Debian's copy. That is why the venv must be made
with `--system-site-packages`: pip then sees Debian's packages as installed and resolves the
operator's dependencies against the versions the worker really runs. A venv without it is
refused rather than warned about: pip resolved it in isolation (often with its own celery),
so some of what it installed would be silently shadowed by other versions in the worker.
"""

import os
import sys

from celeryd_pkg.errors import ConfigError

__all__ = ["KEY", "check", "activate", "shadowed"]

KEY = "tasks.virtualenv"
# ProtectHome=yes in the worker units: these are empty (or absent) for the worker.
HIDDEN = ("/home", "/root", "/run/user")
# Installed into every venv by ensurepip; no task imports them, so shadowing them is harmless.
TOOLING = {"pip", "setuptools", "wheel", "distribute"}
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
# The worker's interpreter (/usr/bin/python3 in the units) must be the one that made the venv.
PYTHON = os.path.realpath(sys.executable)
MAKE = f"{sys.executable} -m venv --system-site-packages"


def _refuse(path, reason):
    raise ConfigError(f"celeryd: {KEY}: {path}: {reason}")


def _user():
    """Return the name of the user we run as (celery in the units), for permission errors."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _is_hidden(path):
    return any(path == top or path.startswith(top + "/") for top in HIDDEN)


def _read_cfg(path):
    """Return pyvenv.cfg of the venv at path as {key: value}; refuse if it is not a venv."""
    cfg = os.path.join(path, "pyvenv.cfg")
    try:
        with open(cfg, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        _refuse(path, f"not a virtual environment (no pyvenv.cfg); make one with: {MAKE} {path}")
    except PermissionError:
        _refuse(path, f"pyvenv.cfg is not readable by user {_user()}: the worker must read the "
                      f"whole venv (chmod -R a+rX {path})")
    except OSError as error:
        _refuse(path, f"cannot read pyvenv.cfg: {error.strerror or error}")
    settings = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings[key.strip().lower()] = value.strip()
    return settings


def _made_by(settings):
    """Return the X.Y Python version that made the venv: `version` from venv, `version_info`
    from pypa's virtualenv (3.11.2.final.0); None if pyvenv.cfg names none."""
    version = settings.get("version") or settings.get("version_info")
    if not version:
        return None
    return ".".join(version.split(".")[:2])


def check(path):
    """Given the path of tasks.virtualenv, return its site-packages directory for the running
    Python. Raise ConfigError (exit 3), one line naming the key, the path and the reason, if
    it is missing, not a venv, made by another Python X.Y or another interpreter, made
    without --system-site-packages, or not readable by the user we run as."""
    try:
        os.stat(path)
    except (FileNotFoundError, PermissionError) as error:
        if _is_hidden(path):
            # ProtectHome=yes: empty or inaccessible for the worker, whatever root sees there.
            _refuse(path, "not visible to the worker: its unit has ProtectHome=yes, which hides "
                          "/home, /root and /run/user; make the venv under /opt, /srv or "
                          "/usr/local")
        if isinstance(error, PermissionError):
            _refuse(path, f"not reachable by user {_user()} (a parent directory is not "
                          f"searchable)")
        _refuse(path, f"no such directory; make it with: {MAKE} {path}")
    if not os.path.isdir(path):
        _refuse(path, "not a directory")
    settings = _read_cfg(path)
    made_by = _made_by(settings)
    if made_by is None:
        _refuse(path, "pyvenv.cfg names no Python version (no version = X.Y.Z line)")
    if made_by != RUNNING:
        _refuse(path, f"made by Python {made_by}, the worker runs Python {RUNNING}; recreate it "
                      f"with: {MAKE} --clear {path}, then pip install your dependencies again")
    home = settings.get("home")
    if home and os.path.realpath(home) != os.path.dirname(PYTHON):
        # Another interpreter's "system site packages" are not Debian's: pip did not see the
        # celery the worker runs (a pyenv or /usr/local python3 first on PATH does this).
        _refuse(path, f"made by the Python in {home}, the worker runs {sys.executable}; "
                      f"recreate it with: {MAKE} --clear {path}")
    if settings.get("include-system-site-packages", "false").lower() != "true":
        _refuse(path, "made without --system-site-packages (pip resolved it without Debian's "
                      "celery, which the worker uses); set include-system-site-packages = true "
                      "in its pyvenv.cfg and pip install your dependencies again, or recreate "
                      f"it with: {MAKE} --clear {path}")
    site_dir = os.path.join(path, "lib", f"python{RUNNING}", "site-packages")
    if not os.path.isdir(site_dir):
        _refuse(path, f"no {site_dir}: the venv is incomplete; recreate it with: "
                      f"{MAKE} --clear {path}")
    if not os.access(site_dir, os.R_OK | os.X_OK):
        _refuse(path, f"{site_dir} is not readable by user {_user()}: the worker must read the "
                      f"whole venv (chmod -R a+rX {path})")
    return site_dir


def shadowed(site_dir, before):
    """Return one line per package installed in site_dir whose import is served by another
    version earlier on the path `before` (Debian's, usually): pip installed it, the worker
    will not use it."""
    from importlib import metadata

    lines = []
    for dist in metadata.distributions(path=[site_dir]):
        name = dist.metadata["Name"]
        if not name or name.lower() in TOOLING:
            continue
        for used in metadata.distributions(name=name, path=before):
            if used.version != dist.version:
                lines.append(f"celeryd: {KEY}: {name} {dist.version} in the venv is shadowed "
                             f"by {name} {used.version} in {used.locate_file('')}: "
                             f"Debian's packages come first")
            break
    return lines


def activate(config, warn=None):
    """Given a Config, append its tasks.virtualenv's site-packages (and the .pth files there)
    to sys.path after every path already on it, before the task modules are imported; return
    that directory, or None without a venv. warn(line) receives a line per shadowed package.
    Raise ConfigError as check() does."""
    import site

    path = config.tasks.virtualenv
    if not path:
        return None
    site_dir = check(path)
    before = list(sys.path)
    site.addsitedir(site_dir)  # appends: Debian's celery stays first
    for line in shadowed(site_dir, before) if warn else ():
        warn(line)
    return site_dir
