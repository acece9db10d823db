"""One strict configuration loader for the worker, the client and the admin command."""

import errno
import os
import stat

from celeryd_pkg import account, parsecache
from celeryd_pkg.errors import ConfigError
from celeryd_pkg.schema import SCHEMA, defaults
from celeryd_pkg.validate import apply_file, permission_message, set_value

__all__ = ["Config", "load", "read_credentials", "config_paths", "is_local_host",
           "permission_message", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "/etc/celeryd/celeryd.yaml"
ENV_PREFIX = "CELERYD_"
# Environment variables that steer the loader itself rather than set a key.
LOADER_ENV = {"CELERYD_CONFIG", "CELERYD_ROOT"}
# The credentials file may set only the broker account's keys and the result store's login.
CREDENTIAL_KEYS = {"broker": set(account.KEYS), "results": set(account.RESULTS_KEYS)}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}
# The errors Path.exists() and Path.is_dir() take to mean "not there" (others are raised).
MISSING_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


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

    def broker_addresses(self):
        """Return the broker's nodes as [(host, port)], in the order they are tried."""
        return account.addresses(self.broker.as_dict())

    def is_cluster(self):
        """Whether the broker is a RabbitMQ cluster (broker.hosts names two or more nodes),
        whose task queues are quorum queues."""
        return len(self.broker.hosts) > 1

    def results_url(self, masked=True):
        """Return the result store's redis[s]:// URL; the password is '***' unless masked is
        False (then it belongs in memory only: Celery's settings, a redis client)."""
        return account.to_results_url(self.results.as_dict(), masked)

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
    from pathlib import Path

    main, conf_d, credentials, explicit = _locations(config_file, env)
    return Path(main), Path(conf_d), Path(credentials), explicit


def _locations(config_file, env):
    """config_paths as path strings spelt as pathlib spells them (messages and sources show
    them): load() does without pathlib, whose import celery-submit's start-up would pay."""
    explicit = config_file or env.get("CELERYD_CONFIG")
    if explicit:
        main = _spelt(explicit)
    else:
        root = _spelt(env.get("CELERYD_ROOT", "/"))  # only "/" and "//" end in a slash
        main = _spelt((root if root.endswith("/") else root + "/") + DEFAULT_CONFIG[1:])
    directory = main[:main.rindex("/") + 1] if "/" in main else ""
    return (main, _spelt(directory + "conf.d"), _spelt(directory + "credentials"),
            bool(explicit))


def _spelt(path):
    """Return path as str(pathlib.PurePosixPath(path)) spells it: no empty or '.' parts, no
    trailing slash, two leading slashes kept (POSIX leaves their meaning open)."""
    path = os.fspath(path)
    root = "//" if path[:2] == "//" and path[2:3] != "/" else "/" if path[:1] == "/" else ""
    return root + "/".join(part for part in path.split("/") if part not in ("", ".")) or "."


def _stat(path):
    """Return os.stat(path), or None where Path.exists() would say False."""
    try:
        return os.stat(path)
    except OSError as error:
        if error.errno not in MISSING_ERRNOS:
            raise
    except ValueError:  # a NUL in the name
        pass
    return None


def _yaml_files(directory):
    """The names Path(directory).glob("*.yaml") finds (dot files too; none if unreadable),
    sorted."""
    try:
        names = os.listdir(directory)
    except PermissionError:
        return []
    return sorted(name for name in names if name.endswith(".yaml"))


def load(config_file=None, overrides=None, env=os.environ, instance=None,
         with_credentials=True):
    """Given an optional explicit config file, flag overrides {(section, key): value}, the
    environment and an optional worker instance name, return a validated Config (without the
    credentials file if with_credentials is False: the operator's own settings). Raise
    ConfigError naming the file, key and expected type on any problem."""
    main, conf_d, credentials, explicit = _locations(config_file, env)
    values = defaults()
    sources = []

    if explicit or _stat(main):
        apply_file(values, main, sources)
    conf_d_stat = _stat(conf_d)
    if conf_d_stat and stat.S_ISDIR(conf_d_stat.st_mode):
        for name in _yaml_files(conf_d):
            # Instance overlays are read only by their own instance, last.
            if not name.startswith("@"):
                apply_file(values, f"{conf_d}/{name}", sources)
    if instance:
        overlay = _spelt(f"{conf_d}/@{instance}.yaml")
        if _stat(overlay):
            apply_file(values, overlay, sources)
    if with_credentials and _stat(credentials):
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
    if broker["hosts"]:  # the cluster's first node is the one named where one host is shown
        broker["host"] = account.addresses(broker)[0][0]
    if broker["tls"]:
        for key in ("ca_file", "cert_file", "key_file"):
            if broker[key] and not os.path.exists(broker[key]):
                raise ConfigError(f"celeryd: broker.{key}: {broker[key]}: no such file")
        if bool(broker["cert_file"]) != bool(broker["key_file"]):
            raise ConfigError("celeryd: broker.cert_file and broker.key_file: set both or "
                              "neither")
    _resolve_results(values["results"], broker)

    parsecache.save()
    return Config({s: Section(s, values[s]) for s in SCHEMA}, sources)


def _resolve_results(results, broker):
    """The store follows the broker unless told otherwise: its host, its TLS; the port is
    redis-server's (6380 with TLS)."""
    if results["tls"] is None:
        results["tls"] = broker["tls"]
    if results["host"] is None:
        results["host"] = broker["host"]
    if results["port"] is None:
        results["port"] = account.default_results_port(results["tls"])


def read_credentials(path, section="broker"):
    """Return the keys of section (broker, or results) the credentials file at path sets ({}
    if there is none), validated as load() validates them. Raise ConfigError as load() does."""
    if not _stat(path):
        return {}
    values = {name: {} for name in SCHEMA}
    apply_file(values, path, [], allowed=CREDENTIAL_KEYS)
    return values[section]


def _env_key(name):
    """Map CELERYD_SECTION_KEY to (section, key), or None for variables not ours (such as
    the old init script's CELERYD_OPTS)."""
    rest = name[len(ENV_PREFIX):].lower()
    for section, keys in SCHEMA.items():
        if rest.startswith(section + "_"):
            key = rest[len(section) + 1:]
            return (section, key)
    return None
