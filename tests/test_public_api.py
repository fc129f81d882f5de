"""Every public name and setting is documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

import quartsess

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_public_name_is_documented_in_the_readme() -> None:
    text = README.read_text()
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", section))
    assert set(quartsess.__all__) <= documented
    for name in quartsess.__all__:
        assert hasattr(quartsess, name)


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    from quartsess.config import OWN_KEYS

    text = README.read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for key in OWN_KEYS:
        assert f"`{key}`" in table, key
