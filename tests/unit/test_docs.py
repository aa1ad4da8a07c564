"""The README's config reference is the one the code generates (docs never drift from defaults)."""

import re
from pathlib import Path

from dcssl.config import load_run_config
from dcssl.configdoc import commented_yaml, markdown_reference
from dcssl.runconfig import RunConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    found = re.search(r"<!-- config-reference:start -->\n(.*)\n<!-- config-reference:end -->", text, re.S)
    assert found, "README lost its config-reference markers"
    assert found.group(1) == markdown_reference(RunConfig), (
        "regenerate with: python -m dcssl.launch config --markdown"
    )


def test_every_field_is_documented():
    rows = markdown_reference(RunConfig).splitlines()[2:]
    undocumented = [row.split("|")[1] for row in rows if row.rstrip().endswith("|  |")]
    assert undocumented == []


def test_commented_yaml_round_trips_to_the_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(commented_yaml(RunConfig))
    assert load_run_config(None, path) == RunConfig()
