"""The worker units' settings that live in the config (worker.outbound, memory_high, memory_max),
written as systemd drop-ins by the generator systemd/celeryd-generator.

systemd runs the generator at boot and at every `systemctl daemon-reload`: the YAML config stays
the one place these settings are kept, both units and every instance get them, and the output
lives in /run, so nothing is left behind on purge. The generator must never fail a boot: on any
problem it writes nothing for the unit concerned (the unit's own default stays: localhost and the
broker only), logs one line to the kernel log (or, in a container, the journal) and exits 0.
It imports the config layer and the standard library only.
"""

import os
import re
import sys
from pathlib import Path

__all__ = ["UNITS", "DROPIN", "UNIT_KEYS", "unit_settings", "dropin_text", "plan", "generate",
           "main", "changed_unit_keys", "reload_warning"]

UNITS = ("celery-worker.service", "celery-worker@.service")
DROPIN = "celeryd-config.conf"
# The worker.* keys that become unit settings, in the order the drop-in writes them.
UNIT_KEYS = ("outbound", "memory_high", "memory_max")
PROG = "celeryd-generator"
# What systemd accepts as an instance name; an overlay named otherwise has no unit.
INSTANCE_NAME = re.compile(r"[A-Za-z0-9:_.\\-]+")
# The generator reads files only: the units' environment is not its environment.
LOADER_ENV = ("CELERYD_ROOT",)


def unit_settings(worker):
    """Given the worker section (a config Section), return {key: value} of UNIT_KEYS, the
    outbound list sorted without duplicates (its order means nothing to systemd)."""
    values = {key: getattr(worker, key) for key in UNIT_KEYS}
    values["outbound"] = sorted(set(values["outbound"]))
    return values


def service_lines(settings):
    """Given unit_settings(), return the [Service] lines they make, [] when none is set."""
    outbound = settings["outbound"]
    # "any" lets everything through: listing more beside it would only mislead.
    lines = [f"IPAddressAllow={address}" for address in (["any"] if "any" in outbound else outbound)]
    if settings["memory_high"]:
        lines.append(f"MemoryHigh={settings['memory_high']}")
    if settings["memory_max"]:
        lines.append(f"MemoryMax={settings['memory_max']}")
    return lines


def dropin_text(settings, sources, masking=False):
    """Given unit_settings() and the files they came from, return the drop-in's text, or None
    when nothing is set. With masking, a text is returned even then: an instance's file of the
    same name replaces its template's, so an overlay can take the template's settings away."""
    lines = service_lines(settings)
    if not lines and not masking:
        return None
    origin = ", ".join(sources) or "built-in defaults"
    body = "".join(f"{line}\n" for line in lines) or "# (nothing beyond the unit's defaults)\n"
    return (f"# Written by {PROG} at boot and at every \"systemctl daemon-reload\" from\n"
            f"# {origin}.\n"
            f"# Set worker.outbound, worker.memory_high and worker.memory_max there, not here.\n"
            f"[Service]\n{body}")


def plan(env=os.environ):
    """Given the environment (only CELERYD_ROOT is read), return ({path relative to the
    generator's directory: text}, [one-line problems]). Never raise: a config that does not
    load yields no file for the units it concerns and a problem line."""
    from celeryd_pkg import config

    env = {name: env[name] for name in LOADER_ENV if name in env}
    try:
        base = config.load(env=env, with_credentials=False)
    except Exception as error:  # noqa: BLE001 - anything but a clean exit would fail a boot
        return {}, [_problem(error, "celery-worker.service, celery-worker@.service and their "
                                    "instances: they keep their defaults (localhost and the "
                                    "broker only, no memory limit)")]
    written, problems = {}, []
    base_settings = unit_settings(base.worker)
    text = dropin_text(base_settings, base.sources)
    if text:
        for unit in UNITS:
            written[f"{unit}.d/{DROPIN}"] = text
    conf_d = config.config_paths(env=env)[1]
    for name in _instance_names(conf_d):
        unit = f"celery-worker@{name}.service"
        try:
            own = config.load(env=env, instance=name, with_credentials=False)
        except Exception as error:  # noqa: BLE001 - as above
            problems.append(_problem(error, f"{unit}, which refuses to start on this config"))
            continue
        settings = unit_settings(own.worker)
        if settings != base_settings:
            written[f"{unit}.d/{DROPIN}"] = dropin_text(settings, own.sources, masking=True)
    return written, problems


def generate(directory, env=os.environ, err=None):
    """Write plan()'s drop-ins under directory, print each problem to err (default: the kernel
    log, see kernel_log) as one line; return the paths written. Never raise."""
    from celeryd_pkg import files

    written, problems = plan(env)
    paths = []
    for relative, text in sorted(written.items()):
        path = Path(directory) / relative
        try:
            # Atomic and fsynced: more than a fresh tmpfs directory needs, but the one writer.
            files.replace(path, text, PROG)
        except Exception as error:  # noqa: BLE001 - as in plan()
            problems.append(_problem(error, relative.split(".d/")[0]))
            continue
        paths.append(str(path))
    for problem in problems:
        _log(problem, env, err)
    return paths


def main(argv=None, env=os.environ, err=None):
    """The generator: argv is NORMAL_DIR [EARLY_DIR LATE_DIR] (systemd.generator(7)); the
    drop-ins go into NORMAL_DIR, below /etc/systemd/system, so `systemctl edit` still wins.
    Always return 0."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(f"{PROG}: usage: {PROG} NORMAL_DIR [EARLY_DIR LATE_DIR]", file=err or sys.stderr)
        return 0
    try:
        generate(argv[0], env, err)
    except Exception as error:  # noqa: BLE001 - a generator's failure would mark the boot
        _log(_problem(error, "the celery-worker units"), env, err)
    return 0


def changed_unit_keys(old_config, new_config):
    """Given the config a worker runs with and a newly loaded one, return the names of the keys
    applied to the units ('worker.outbound', ...) whose values differ."""
    old, new = unit_settings(old_config.worker), unit_settings(new_config.worker)
    return [f"worker.{key}" for key in UNIT_KEYS if old[key] != new[key]]


def reload_warning(old_config, new_config, instance=None):
    """Return the line a reload logs when unit keys changed (a reload cannot apply them: systemd
    sets them when the unit starts), or None."""
    keys = changed_unit_keys(old_config, new_config)
    if not keys:
        return None
    unit = f"celery-worker@{instance}" if instance else "celery-worker"
    return (f"{', '.join(keys)} changed: takes effect after systemctl daemon-reload && "
            f"systemctl restart {unit}")


def _instance_names(conf_d):
    """Return the instance names of the overlays conf_d/@NAME.yaml that a unit can have."""
    try:
        stems = sorted(path.stem[1:] for path in Path(conf_d).glob("@*.yaml"))
    except OSError:
        return []
    return [name for name in stems if INSTANCE_NAME.fullmatch(name)]


def _log(line, env, err):
    """Write one line, after the program's name, to err if given, else to the kernel log:
    systemd.generator(7) says a generator logs there, as at boot there is no journal yet (and
    its stderr is /dev/null). Where there is no /dev/kmsg (a container) the line goes to the
    journal's syslog socket when journald runs (at daemon-reload), else to stderr. CELERYD_ROOT
    moves both paths with the config: tests never write to the host's."""
    if err is not None:
        print(f"{PROG}: {line}", file=err, flush=True)
        return
    root = Path(env.get("CELERYD_ROOT", "/"))
    # <27>: facility daemon, priority err; journald takes the name before "[" as the syslog
    # identifier (journalctl -t celeryd-generator). The kernel takes ~1 KiB per line.
    record = f"<27>{PROG}[{os.getpid()}]: {line}"[:1000].encode()
    if not (_to_kmsg(root / "dev" / "kmsg", record)
            or _to_syslog(root / "run" / "systemd" / "journal" / "dev-log", record)):
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def _to_kmsg(path, record):
    """Write record as one kernel log line; return whether it was written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, record + b"\n")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _to_syslog(path, record):
    """Send record to a syslog datagram socket without ever waiting; return whether it went."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # a generator must never hang
            sock.sendto(record, str(path))
        return True
    except OSError:
        return False


def _problem(error, effect):
    """One line for the journal: what failed (file and key, from the error) and what was not
    written."""
    message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
    lines = message.splitlines() or [type(error).__name__]
    first = lines[0].removeprefix("celeryd: ").removeprefix(f"{PROG}: ")
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return f"{first}{more}; nothing written for {effect}"
