"""The README's configuration table and demo logins stay in step with the code."""

import re
from pathlib import Path

from pacs_cloud import demo

ROOT = Path(__file__).resolve().parents[2]


def configuration_table() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]


def test_every_environment_variable_of_the_settings_is_documented():
    settings_source = (ROOT / "pacs_cloud" / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\("([A-Z0-9_]+)"', settings_source))
    first_cells = [line.split("|")[1] for line in configuration_table().splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    assert read - documented == set(), "document these in the README"
    assert documented - read == set(), "the README documents variables the settings do not read"


def test_every_demo_login_is_listed():
    readme = (ROOT / "README.md").read_text()
    for username, *_ in demo.USERS:
        assert f"| `{username}` |" in readme
    assert "| `platform` |" in readme
    assert f"`{demo.DEMO_PASSWORD}`" in readme
