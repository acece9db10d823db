"""Read one YAML configuration file and check every key in it against the schema."""

import grp
import os

from celeryd_pkg import parsecache
from celeryd_pkg.errors import ConfigError
from celeryd_pkg.schema import SCHEMA

__all__ = ["apply_file", "set_value", "permission_message"]

TYPE_NAMES = {int: "an integer", str: "a string", list: "a list of strings",
              bool: "true or false", dict: "a mapping (in a file)"}


def _read_text(path):
    """Return the text of path (a str or a Path) as Path.read_text reads it."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except PermissionError:
        raise ConfigError(permission_message(path)) from None
    except FileNotFoundError:
        raise ConfigError(f"celeryd: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"celeryd: {path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"celeryd: {path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise ConfigError(f"celeryd: {path}: cannot read ({error.strerror})") from None


def permission_message(path):
    try:
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
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
    _note_lines(node, (), lines, yaml.MappingNode)
    return data, lines


def _note_lines(node, path, lines, mapping, depth=4):
    """Record the line of every key down to depth levels (beat.entries.NAME.KEY) in lines."""
    if depth and isinstance(node, mapping):
        for key_node, value_node in node.value:
            lines[path + (key_node.value,)] = key_node.start_mark.line + 1
            _note_lines(value_node, path + (key_node.value,), lines, mapping, depth - 1)


def _parse(path, text):
    """Return (data, lines) of a config file's text; lines is None where the data came
    without yaml: a JSON body after comment lines (as celeryd writes the credentials file:
    JSON is YAML too), or the parse cache."""
    body = text
    while body.startswith("#"):
        body = body.partition("\n")[2]
    if body.startswith("{"):
        import json

        try:
            return json.loads(body), None
        except ValueError:
            pass  # YAML's flow style, say: yaml reads it and names the line of any error
    found, data = parsecache.lookup(text)
    if found:
        return data, None
    data, lines = _parse_yaml(path, text)
    try:
        readable_by_all = os.stat(path).st_mode & 0o004
    except OSError:
        readable_by_all = False
    if readable_by_all:  # the cache is readable by all: it holds nothing that is not
        parsecache.remember(text, data)
    return data, lines


def apply_file(values, path, sources, allowed=None):
    """Merge one YAML file into values, validating every key against the schema (and against
    allowed, a {section: keys} subset, when given)."""
    text = _read_text(path)
    data, lines = _parse(path, text)
    sources.append(str(path))
    try:
        _merge(values, path, data, lines or {}, allowed)
    except ConfigError:
        if lines is not None:
            raise
        # The same problems again, now with the line numbers only yaml knows.
        _merge(values, path, *_parse_yaml(path, text), allowed)
        raise


def _merge(values, path, data, lines, allowed):
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
            if SCHEMA[section][key].type is dict and isinstance(value, (dict, type(None))):
                _merge_entries(values, path, (section, key), value or {}, lines, problems)
            else:
                set_value(values, (section, key), value, where, problems)
    if problems:
        raise ConfigError("\n".join(problems))


def _merge_entries(values, path, key, entries, lines, problems):
    """Merge a file's named entries (beat.entries) into values: each checked on its own, a
    later file's entry replacing one of the same name, NAME: null removing it."""
    from celeryd_pkg.schedule import check_entry

    merged = values[key[0]][key[1]]
    for name, body in entries.items():
        shown = f"{'.'.join(key)}.{_shown(name)}"
        if body is None:
            merged.pop(name, None)
            continue
        found = check_entry(name, body)
        for option, problem in found:
            line = lines.get(key + (name, option) if option else key + (name,), "?")
            option = f".{_shown(option)}" if option else ""
            problems.append(f"celeryd: {path}: line {line}: {shown}{option}: {problem}")
        if not found:
            merged[name] = body


def set_value(values, key, value, where, problems, from_text=False):
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
    values[section][name] = type(value)(value) if isinstance(value, (list, dict)) else value


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
    if spec.check is not None:
        for item in value if spec.type is list else (value,):
            problem = spec.check(item)
            if problem:
                return problem
    return None


def _shown(name):
    """A key name fit for a one-line message: escaped when it holds control characters."""
    text = str(name)
    return text if text.isprintable() else repr(text)[1:-1]


def _kind(value):
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    return kinds.get(type(value), type(value).__name__)
