"""One strict configuration loader for the worker, the client and the admin command."""

import os
from pathlib import Path

from celeryd_pkg import account
from celeryd_pkg.errors import ConfigError
from celeryd_pkg.schema import SCHEMA, defaults
from celeryd_pkg.validate import apply_file, permission_message, set_value

__all__ = ["Config", "load", "read_credentials", "config_paths", "is_local_host",
           "permission_message", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "/etc/celeryd/celeryd.yaml"
ENV_PREFIX = "CELERYD_"
# Environment variables that steer the loader itself rather than set a key.
LOADER_ENV = {"CELERYD_CONFIG", "CELERYD_ROOT"}
# The credentials file may set only the broker account's keys.
CREDENTIAL_KEYS = {"broker": set(account.KEYS)}
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

    def __delattr__(self, key):
        raise AttributeError("the configuration is read-only")

    def as_dict(self):
        """Return a copy of the section's values as a plain dict."""
        return dict(self._values)

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

    def __delattr__(self, key):
        raise AttributeError("the configuration is read-only")

    def broker_url(self, masked=True, vhost=None):
        """Return the broker's AMQP URL (of another vhost if given); the password is '***'
        unless masked is False."""
        return account.to_url(self.broker.as_dict(), masked, vhost)

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


def load(config_file=None, overrides=None, env=os.environ, instance=None,
         with_credentials=True):
    """Given an optional explicit config file, flag overrides {(section, key): value}, the
    environment and an optional worker instance name, return a validated Config (without the
    credentials file if with_credentials is False: the operator's own settings). Raise
    ConfigError naming the file, key and expected type on any problem."""
    main, conf_d, credentials, explicit = config_paths(config_file, env)
    values = defaults()
    sources = []

    if explicit or main.exists():
        apply_file(values, main, sources)
    if conf_d.is_dir():
        for path in sorted(conf_d.glob("*.yaml")):
            # Instance overlays are read only by their own instance, last.
            if path.stem.startswith("@"):
                continue
            apply_file(values, path, sources)
    if instance:
        overlay = conf_d / f"@{instance}.yaml"
        if overlay.exists():
            apply_file(values, overlay, sources)
    if with_credentials and credentials.exists():
        apply_file(values, credentials, sources, allowed=CREDENTIAL_KEYS)

    problems = []
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name not in LOADER_ENV:
            key = _env_key(name)
            if key is None:
                continue
            set_value(values, key, raw, f"environment {name}", problems, from_text=True)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_value(values, key, value, f"option --{key[1].replace('_', '-')}", problems,
                      from_text=isinstance(value, str))
    if problems:
        raise ConfigError("\n".join(problems))
    broker = values["broker"]
    if broker["port"] is None:
        broker["port"] = account.default_port(broker["tls"])
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
    apply_file(values, path, [], allowed=CREDENTIAL_KEYS)
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
