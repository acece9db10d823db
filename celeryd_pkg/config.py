"""One strict configuration loader for the worker, the client and the admin command."""

import grp
import os
from pathlib import Path
from urllib.parse import quote

from celeryd_pkg.errors import ConfigError
from celeryd_pkg.schema import CREDENTIAL_KEYS, PORTS, SCHEMA, defaults

__all__ = ["Config", "load", "read_credentials", "config_paths", "is_local_host",
           "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "/etc/celeryd/celeryd.yaml"
ENV_PREFIX = "CELERYD_"
# Environment variables that steer the loader itself rather than set a key.
LOADER_ENV = {"CELERYD_CONFIG", "CELERYD_ROOT"}
TYPE_NAMES = {int: "an integer", str: "a string", list: "a list of strings",
              bool: "true or false"}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


class Section:
    """A read-only view of one validated config section: `config.worker.concurrency`."""

    __slots__ = ("_name", "_values")

    def __init__(self, name, values):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"no key '{self._name}.{key}'") from None

    def __setattr__(self, key, value):
        raise AttributeError("the configuration is read-only")

    def __repr__(self):
        shown = {k: ("***" if k == "password" and v else v) for k, v in self._values.items()}
        return f"Section({self._name!r}, {shown!r})"


class Config:
    """The merged, validated configuration, one Section attribute per schema section, and
    sources: every file that contributed, in the order applied."""

    def __init__(self, sections, sources=()):
        self.__dict__.update(sections)
        self.__dict__["sources"] = tuple(sources)

    def __setattr__(self, key, value):
        raise AttributeError("the configuration is read-only")

    def broker_url(self, masked=True, vhost=None):
        """Return the broker's AMQP URL (of another vhost if given); the password is '***'
        unless masked is False."""
        b = self.broker
        vhost = b.vhost if vhost is None else vhost
        password = b.password or ""
        secret = "***" if masked and password else quote(password, safe="")
        auth = quote(b.user, safe="") + (":" + secret if password else "")
        scheme = "amqps" if b.tls else "amqp"
        host = f"[{b.host}]" if ":" in b.host else b.host
        return f"{scheme}://{auth}@{host}:{b.port}/{quote(vhost, safe='')}"

    def plain_remote_warning(self):
        """Return a warning when the password and tasks would cross the network in clear
        (plain AMQP to a broker not on this host, not explicitly allowed), else None."""
        b = self.broker
        if b.tls or b.allow_plain or is_local_host(b.host):
            return None
        return (f"celeryd: warning: broker {b.host} is not on this host and broker.tls is off: "
                f"the password and every task cross the network unencrypted; set broker.tls: "
                f"true (celeryd-admin join amqps://...) or broker.allow_plain: true")


def is_local_host(host):
    """Whether host names this machine (loopback), so nothing crosses the network."""
    return host.lower() in LOCAL_HOSTS or host.startswith("127.")


def config_paths(config_file=None, env=os.environ):
    """Given an explicit config file (or None), return (main file, conf.d dir, credentials
    file, explicit) where explicit says whether a missing main file is an error."""
    explicit = config_file or env.get("CELERYD_CONFIG")
    if explicit:
        main = Path(explicit)
    else:
        main = Path(env.get("CELERYD_ROOT", "/")) / DEFAULT_CONFIG.lstrip("/")
    return main, main.parent / "conf.d", main.parent / "credentials", bool(explicit)


def load(config_file=None, overrides=None, env=os.environ, instance=None):
    """Given an optional explicit config file, flag overrides {(section, key): value}, the
    environment and an optional worker instance name, return a validated Config. Raise
    ConfigError naming the file, key and expected type on any problem."""
    main, conf_d, credentials, explicit = config_paths(config_file, env)
    values = defaults()
    sources = []

    if explicit or main.exists():
        _apply_file(values, main, sources)
    if conf_d.is_dir():
        for path in sorted(conf_d.glob("*.yaml")):
            # Instance overlays are read only by their own instance, last.
            if path.stem.startswith("@"):
                continue
            _apply_file(values, path, sources)
    if instance:
        overlay = conf_d / f"@{instance}.yaml"
        if overlay.exists():
            _apply_file(values, overlay, sources)
    if credentials.exists():
        _apply_file(values, credentials, sources, allowed=CREDENTIAL_KEYS)

    problems = []
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name not in LOADER_ENV:
            key = _env_key(name)
            if key is None:
                continue
            _set(values, key, raw, f"environment {name}", problems, from_text=True)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(values, key, value, f"option --{key[1].replace('_', '-')}", problems,
                 from_text=isinstance(value, str))
    if problems:
        raise ConfigError("\n".join(problems))
    broker = values["broker"]
    if broker["port"] is None:
        broker["port"] = PORTS[broker["tls"]]
    if broker["tls"]:
        for key in ("ca_file", "cert_file", "key_file"):
            if broker[key] and not os.path.exists(broker[key]):
                raise ConfigError(f"celeryd: broker.{key}: {broker[key]}: no such file")
        if bool(broker["cert_file"]) != bool(broker["key_file"]):
            raise ConfigError("celeryd: broker.cert_file and broker.key_file: set both or "
                              "neither")

    return Config({s: Section(s, values[s]) for s in SCHEMA}, sources)


def read_credentials(path):
    """Return the broker keys the credentials file at path sets ({} if there is none),
    validated as load() validates them. Raise ConfigError as load() does."""
    path = Path(path)
    if not path.exists():
        return {}
    values = {section: {} for section in SCHEMA}
    _apply_file(values, path, [], allowed=CREDENTIAL_KEYS)
    return values["broker"]


def _env_key(name):
    """Map CELERYD_SECTION_KEY to (section, key), or None for variables not ours (such as
    the old init script's CELERYD_OPTS)."""
    rest = name[len(ENV_PREFIX):].lower()
    for section, keys in SCHEMA.items():
        if rest.startswith(section + "_"):
            key = rest[len(section) + 1:]
            return (section, key)
    return None


def _read_text(path):
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError(_permission_message(path)) from None
    except FileNotFoundError:
        raise ConfigError(f"celeryd: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"celeryd: {path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"celeryd: {path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise ConfigError(f"celeryd: {path}: cannot read ({error.strerror})") from None


def _permission_message(path):
    try:
        group = grp.getgrgid(path.stat().st_gid).gr_name
    except (OSError, KeyError):
        group = "celery"
    return (f"celeryd: {path}: permission denied; it is readable by group '{group}': "
            f"run as root or join the group (sudo adduser $USER {group}, then log in again)")


def _parse_yaml(path, text):
    """Return (data, lines) where lines maps (section, key) to its 1-based line number."""
    import yaml

    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader already refuses control characters
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"celeryd: {path}: {where}YAML syntax error: {problem}") from None
    except RecursionError:
        raise ConfigError(f"celeryd: {path}: YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            lines[(key_node.value,)] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.MappingNode):
                for sub_key, _ in value_node.value:
                    lines[(key_node.value, sub_key.value)] = sub_key.start_mark.line + 1
    return data, lines


def _apply_file(values, path, sources, allowed=None):
    """Merge one YAML file into values, validating every key against the schema (and against
    allowed, a {section: keys} subset, when given)."""
    data, lines = _parse_yaml(path, _read_text(path))
    sources.append(str(path))
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"celeryd: {path}: expected a mapping of sections "
                          f"({', '.join(SCHEMA)}), got {_kind(data)}")
    problems = []
    for section, body in data.items():
        where = f"{path}: line {lines.get((section,), '?')}"
        permitted = (allowed or SCHEMA).get(section)
        if section not in SCHEMA or permitted is None:
            choices = ", ".join(allowed or SCHEMA)
            problems.append(f"celeryd: {where}: unknown section '{_shown(section)}' (expected "
                            f"one of {choices})")
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.append(f"celeryd: {where}: {section}: expected a mapping, got {_kind(body)}")
            continue
        for key, value in body.items():
            where = f"{path}: line {lines.get((section, key), '?')}"
            if key not in permitted:
                hint = "" if key not in SCHEMA[section] else " (not allowed in this file)"
                problems.append(f"celeryd: {where}: unknown key "
                                f"'{_shown(section)}.{_shown(key)}'{hint}")
                continue
            _set(values, (section, key), value, where, problems)
    if problems:
        raise ConfigError("\n".join(problems))


def _set(values, key, value, where, problems, from_text=False):
    """Validate value for key (section, name) and store it, or append a problem line."""
    section, name = key
    spec = SCHEMA.get(section, {}).get(name)
    if spec is None:
        problems.append(f"celeryd: {where}: unknown key '{_shown(section)}.{_shown(name)}'")
        return
    if from_text:
        value = _from_text(spec, value)
    error = _check(spec, value, secret=(name == "password"))
    if error:
        problems.append(f"celeryd: {where}: {section}.{name}: {error}")
        return
    values[section][name] = list(value) if isinstance(value, list) else value


BOOLEAN_TEXT = {"true": True, "yes": True, "on": True, "1": True,
                "false": False, "no": False, "off": False, "0": False}


def _from_text(spec, text):
    """Convert a string from the environment or a flag into the key's type, when it can."""
    text = text.strip()
    if spec.optional and text in ("", "null", "none"):
        return None
    if spec.type is int:
        try:
            return int(text)
        except ValueError:
            return text
    if spec.type is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    if spec.type is bool:
        return BOOLEAN_TEXT.get(text.lower(), text)
    return text


def _check(spec, value, secret=False):
    """Return a message saying what is wrong with value for spec, or None if it is valid.
    A secret's value is never repeated in the message."""
    if value is None:
        return None if spec.optional else f"expected {TYPE_NAMES[spec.type]}, got nothing"
    ok = isinstance(value, spec.type) and (spec.type is bool or not isinstance(value, bool))
    if ok and spec.type is list:
        ok = all(isinstance(item, str) and item for item in value)
    if not ok:
        shown = "" if secret else f" {value!r}"
        return f"expected {TYPE_NAMES[spec.type]}, got {_kind(value)}{shown}"
    if spec.minimum is not None and value < spec.minimum:
        return f"must be at least {spec.minimum}, got {value}"
    if spec.type is str and not value.strip():
        return "must not be empty"
    return None


def _shown(name):
    """A key name fit for a one-line message: escaped when it holds control characters."""
    text = str(name)
    return text if text.isprintable() else repr(text)[1:-1]


def _kind(value):
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    return kinds.get(type(value), type(value).__name__)
