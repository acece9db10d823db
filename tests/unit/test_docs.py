"""The README's configuration reference and exit-code table match the code."""

import re
from pathlib import Path

from celeryd_pkg import errors
from celeryd_pkg.schema import SCHEMA

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_documents_every_config_key_and_no_other():
    documented = set(re.findall(r"^\| (\w+\.\w+) \|", README, re.MULTILINE))
    assert documented == {f"{section}.{key}" for section, keys in SCHEMA.items() for key in keys}


def test_readme_exit_code_table_matches_the_error_classes():
    codes = {int(code) for code in re.findall(r"^\| (\d) \|", README, re.MULTILINE)}
    classes = {cls.exit_code for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.CelerydError)}
    assert codes == classes | {0}
