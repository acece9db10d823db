"""conf/celeryd.yaml, README's key table and celeryd-admin(8)'s key list are the schema's."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from celeryd_pkg import config, docgen as module
from celeryd_pkg.schema import SCHEMA, Key, defaults

REPO = Path(__file__).resolve().parents[2]
GENERATED = (module.YAML_FILE, module.README_FILE, module.MAN_FILE)
ALL_KEYS = [(section, name) for section, keys in SCHEMA.items() for name in keys]


@pytest.fixture
def tree(tmp_path):
    """A copy of the three generated files, as a source tree of their own."""
    for name in GENERATED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, tmp_path / name)
    return tmp_path


def uncommented(text):
    """Return the YAML with every commented-out key line ("#  key: value") switched on."""
    return re.sub(r"^#(  \w+:)", r"\1", text, flags=re.MULTILINE)


def between(text, begin, end):
    return text[text.index(begin + "\n") + len(begin) + 1:text.index(end + "\n")]


@pytest.mark.parametrize("name", GENERATED)
def test_the_committed_copy_equals_what_the_generator_produces(name):
    committed, wanted = module.generate(REPO)[REPO / name]
    assert committed == wanted, f"{name} differs from celeryd_pkg/schema.py: run make docs"


def test_the_shipped_file_is_all_comments_and_loads_as_the_built_in_defaults(tmp_path):
    path = tmp_path / "celeryd.yaml"
    path.write_text(module.render_yaml())
    data = yaml.safe_load(path.read_text())
    assert data == {section: None for section in SCHEMA}  # live headers, every key commented
    loaded = config.load(str(path), env={})
    assert [Path(p).name for p in loaded.sources] == ["celeryd.yaml"]
    for section, name in ALL_KEYS:
        if SCHEMA[section][name].default is not None:
            assert getattr(getattr(loaded, section), name) == defaults()[section][name]


def test_uncommenting_every_key_gives_the_schema_defaults_and_a_valid_config(tmp_path):
    path = tmp_path / "celeryd.yaml"
    path.write_text(uncommented(module.render_yaml()))
    data = yaml.safe_load(path.read_text())
    assert data == defaults()  # None keys read back as null: unset
    loaded = config.load(str(path), env={})
    assert loaded.broker.port == 5672  # unset port: AMQP without TLS
    for section, name in ALL_KEYS:
        if SCHEMA[section][name].default is not None:
            assert getattr(getattr(loaded, section), name) == defaults()[section][name]


def test_every_schema_key_appears_in_each_output_in_schema_order():
    yaml_text, table, man = module.render_yaml(), module.render_table(), module.render_man()
    yaml_keys = re.findall(r"^(\w+):$|^#  (\w+):", yaml_text, re.MULTILINE)
    sections, found = None, []
    for section, name in yaml_keys:
        sections = section or sections
        if name:
            found.append((sections, name))
    assert found == ALL_KEYS
    assert re.findall(r"^\| (\w+)\.(\w+) \|", table, re.MULTILINE) == ALL_KEYS
    assert re.findall(r"^\.B (\w+)\.(\w+)$", man, re.MULTILINE) == ALL_KEYS


def test_every_key_has_its_description_above_it_in_the_yaml():
    lines = module.render_yaml().splitlines()
    for section, name in ALL_KEYS:
        # Key names repeat across sections (results.host, broker.host): look in its own.
        start = lines.index(f"{section}:")
        key_line = next(i for i, line in enumerate(lines)
                        if i > start and line.startswith(f"#  {name}:"))
        assert lines[key_line - 1].startswith("  # ")
        assert SCHEMA[section][name].description.split()[-1] in lines[key_line - 1]


def test_an_unset_default_shows_what_the_description_says_it_means():
    port = Key(int, None, "RabbitMQ port (default 5671 with TLS, 5672 without).", True)
    assert module._default(port) == ("5671 with TLS, 5672 without", "RabbitMQ port.")
    limit = Key(int, None, "Hard time limit (unset: none).", True)
    assert module._default(limit) == ("none", "Hard time limit.")
    assert module._default(Key(str, None, "Private key.", True)) == ("(unset)", "Private key.")
    assert "| broker.port | 5671 with TLS, 5672 without |" in module.render_table()


def test_defaults_render_as_yaml_flow_values_that_read_back_the_same():
    assert module._value(["celery"]) == "[celery]"
    assert module._value([]) == "[]"
    assert (module._value(True), module._value(False)) == ("true", "false")
    for value in ("localhost", "yes", "4", "a: b", "", "[x]", "#x", ["a b", "null"]):
        assert yaml.safe_load(module._value(value)) == value


def test_man_text_escapes_hyphens_backslashes_and_a_leading_dot():
    assert module._roff(".x-y\\z") == "\\&.x\\-y\\ez"
    for line in module.render_man().splitlines():
        assert not re.search(r"(?<!\\)-", line), line


def test_check_exits_1_and_names_only_the_file_that_differs(tree, capsys):
    readme = tree / "README.md"
    readme.write_text(readme.read_text().replace("| worker.concurrency | 2 |",
                                                 "| worker.concurrency | 4 |"))
    assert module.main(["--check", "--root", str(tree)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{readme}: differs from what celeryd_pkg/schema.py generates; run make docs"]


def test_write_restores_every_file_and_check_then_passes(tree, capsys):
    (tree / module.YAML_FILE).write_text("worker:\n  concurrency: 2\n")
    man = tree / module.MAN_FILE
    man.write_text(man.read_text().replace(".B broker.host\n", ".B broker.hots\n"))
    man.chmod(0o640)
    assert module.main(["--write", "--root", str(tree)]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == [
        f"wrote {tree / module.YAML_FILE}", f"wrote {man}"]
    for name in GENERATED:
        assert (tree / name).read_text() == (REPO / name).read_text()
    assert man.stat().st_mode & 0o777 == 0o640
    assert module.main(["--check", "--root", str(tree)]) == 0


def test_the_generated_regions_are_only_what_lies_between_the_markers():
    readme = (REPO / "README.md").read_text()
    assert between(readme, *module.README_MARKERS) == module.render_table()
    man = (REPO / module.MAN_FILE).read_text()
    assert between(man, *module.MAN_MARKERS) == module.render_man()
    assert man.index(module.MAN_MARKERS[1]) < man.index(".SH FILES")


def test_a_file_without_its_markers_is_a_one_line_error_exit_2(tree, capsys):
    man = tree / module.MAN_FILE
    man.write_text(man.read_text().replace(module.MAN_MARKERS[0] + "\n", ""))
    assert module.main(["--check", "--root", str(tree)]) == 2
    assert capsys.readouterr().err == (
        f"docgen: {man}: no '{module.MAN_MARKERS[0]}' ... '{module.MAN_MARKERS[1]}' lines "
        f"to generate between\n")


def test_outside_the_source_tree_without_root_it_says_to_give_root(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert module.main(["--check"]) == 2
    err = capsys.readouterr().err
    assert err == (f"docgen: {module.YAML_FILE}: cannot read (No such file or directory); give "
                   f"--root DIR, the top of the source tree\n")


def test_the_command_line_checks_the_source_tree_from_its_top():
    done = subprocess.run([sys.executable, "-m", "celeryd_pkg.docgen", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    usage = subprocess.run([sys.executable, "-m", "celeryd_pkg.docgen"], cwd=REPO,
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "one of the arguments --write --check" in usage.stderr
