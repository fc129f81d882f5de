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
    # And the other way: every name a bullet introduces is exported.
    introduced = set(re.findall(r"^- `([A-Za-z_][A-Za-z0-9_]*)`", section, re.MULTILINE))
    assert introduced <= set(quartsess.__all__)


def test_every_error_is_a_quartsess_error() -> None:
    for name in quartsess.__all__:
        value = getattr(quartsess, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, quartsess.QuartSessError), name


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    from quartsess.config import OWN_KEYS

    text = README.read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for key in OWN_KEYS:
        assert f"`{key}`" in table, key
