"""Import rules, read with ast: the client imports no worker code, the config no consumer."""

import ast
from pathlib import Path

PACKAGE = "celeryd_pkg"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE
# The client's entry points: celery-submit and the application's Python API. Both may use
# the shared settings and broker modules, never worker code.
CLIENT_MODULES = ("submit", "client")
# Worker-side modules; a name also covers everything under it (the admin package).
WORKER_MODULES = ("app", "worker", "tasks", "monitor", "notify", "admin", "poison", "tally",
                  "panel", "metrics", "journal", "stopping")
# The config layer may import only itself.
CONFIG_MODULES = ("config", "validate", "schema", "errors", "files", "account", "joinparts",
                  "parsecache", "schedule", "slots")


def module_file(root, name):
    """Given the package directory and a dotted module name, return its source file or None."""
    path = root.parent.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def with_parents(package, name):
    """Importing a.b.c runs a, a.b and a.b.c: return those inside the package."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)
            if ".".join(parts[:i]).startswith(package)]


def imported_by(root, package, name):
    """Given a module, return the package modules it imports anywhere, lazy imports included."""
    source = module_file(root, name)
    tree = ast.parse(source.read_text(), str(source))
    is_package = source.name == "__init__.py"
    found = with_parents(package, name)[:-1]
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                anchor = parts[:len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base]
            # `from pkg import x` imports the module pkg.x when x is one.
            targets += [f"{base}.{alias.name}" for alias in node.names
                        if module_file(root, f"{base}.{alias.name}")]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            targets = [node.args[0].value]
        for target in targets:
            if target == package or target.startswith(package + "."):
                found += [parent for parent in with_parents(package, target) if parent not in found]
    return found


def reach(root, package, starts):
    """Follow imports from the start modules; return {module: chain of modules that leads to it}."""
    chains = {f"{package}.{start}": [f"{package}.{start}"] for start in starts}
    queue = list(chains)
    while queue:
        current = queue.pop(0)
        if module_file(root, current) is None:
            continue
        for target in imported_by(root, package, current):
            if target not in chains:
                chains[target] = chains[current] + [target]
                queue.append(target)
    return chains


def violations(root, package, starts, is_forbidden):
    """Return one 'a -> b -> c' line per module reached from starts that is_forbidden."""
    def short(name):
        return name[len(package) + 1:] or package
    lines = []
    for name, chain in reach(root, package, starts).items():
        if is_forbidden(short(name)):
            lines.append(" -> ".join(short(link) for link in chain))
    return sorted(lines)


def present(names):
    return [name for name in names if module_file(ROOT, f"{PACKAGE}.{name}")]


def test_the_client_imports_no_worker_or_admin_module_on_any_path():
    starts = present(CLIENT_MODULES)
    assert starts == list(CLIENT_MODULES)

    def worker_side(name):
        return any(name == w or name.startswith(w + ".") for w in WORKER_MODULES)
    assert violations(ROOT, PACKAGE, starts, worker_side) == []


def test_the_config_layer_imports_nothing_of_celeryd_pkg_but_itself():
    starts = present(CONFIG_MODULES)
    assert "config" in starts and "schema" in starts

    def consumer(name):
        return name not in CONFIG_MODULES and name != PACKAGE
    assert violations(ROOT, PACKAGE, starts, consumer) == []


def test_the_beat_imports_no_celery_app_task_code_or_admin_module():
    # celery-beat talks AMQP through py-amqp and builds messages like celery-submit; only
    # notify.py (systemd's socket) is shared with the worker side.
    def forbidden(name):
        return name != "notify" and any(name == w or name.startswith(w + ".")
                                        for w in WORKER_MODULES)
    assert violations(ROOT, PACKAGE, present(["beat"]), forbidden) == []


def test_the_walker_follows_every_import_form_to_the_end_of_a_lazy_chain(tmp_path):
    package = tmp_path / "pkg"
    (package / "d").mkdir(parents=True)
    sources = {
        "__init__.py": "VERSION = 1\n",
        "a.py": "def later():\n    from pkg import b, VERSION\n",
        "b.py": "from .c import thing\n",
        "c.py": "import os\nimport pkg.d.e\nthing = 1\n",
        "d/__init__.py": "",
        "d/e.py": "from .. import a\nfrom . import f\n",
        "d/f.py": "import importlib\nimportlib.import_module('pkg.g')\n",
        "g.py": "",
        "h.py": "",
    }
    for path, text in sources.items():
        (package / path).write_text(text)

    chains = reach(package, "pkg", ["a"])
    assert chains["pkg.g"] == ["pkg.a", "pkg.b", "pkg.c", "pkg.d.e", "pkg.d.f", "pkg.g"]
    assert "pkg.h" not in chains
    assert violations(package, "pkg", ["a"], lambda name: name.startswith("d")) == [
        "a -> b -> c -> d", "a -> b -> c -> d.e", "a -> b -> c -> d.e -> d.f"]
