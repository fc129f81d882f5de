"""Sphinx configuration for quartsess's documentation (``docs/``).

Build: ``python -m sphinx -W -n --keep-going -b html docs docs/_build/html``; the test
suite does the same (tests/test_docs.py) and checks every internal link of the result.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import quartsess

ROOT = Path(__file__).resolve().parent.parent

project = "quartsess"
author = "The quartsess developers"
copyright = "2026, The quartsess developers"
release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

# Nitpicky mode (-n) checks every cross-reference. The network is closed, so there is no
# intersphinx inventory for the libraries quartsess builds on: references into them (in
# signatures and base classes) cannot resolve and are not ours to check.
nitpick_ignore_regex = [
    ("py:.*", r"(quart|werkzeug|flask|sqlalchemy|cryptography|click|asyncio)(\..*)?"),
    ("py:.*", r"(collections\.abc|typing|datetime|builtins|contextlib)\..*"),
    # quartsess's private modules: the public names are documented under quartsess.
    (
        "py:.*",
        r"quartsess\.(stores\.\w+|users|saving|serializer|keys|clock|pruner|codec|interface|session|config|ids|expiry|lifecycle|owners|sealing|kept|rotation|extension|live|holds|exclusive)\..*",
    ),
    ("py:class", r"(datetime|SansIOResponse)"),
    ("py:class", r"(Quart|Response|WerkzeugResponse|BaseRequestWebsocket|URL|SessionMixin)"),
    ("py:class", r"(CallbackDict|SessionInterface|ServiceUnavailable|Clock|StoredSession)"),
    ("py:class", r"(SessionSaver|SessionParts|Lifecycle|OwnerKeys|ExpiryPolicy)"),
    ("py:class", r"(LiveWebsockets|Hold|SessionHolds|~?P|~?T)"),
    ("py:class", r"(SessionStore|PayloadCodec|Pruner|Mapping|Any|Iterator|KeysView)"),
    ("py:class", r"(ValuesView|ItemsView|Table|MetaData|Exception|ValueError|TypeError)"),
    ("py:class", r"(Loaded|Persist|AnyResponse|Self|AbstractAsyncContextManager|SessionConfig)"),
    ("py:class", r"(SaveOutcome|SaveResult|Row|StatementRunner|Connections|AsyncEngine)"),
    ("py:class", r"(Client|UserSessions)"),
]

html_theme = "furo"
html_title = f"quartsess {release}"
html_static_path: list[str] = []
html_show_sourcelink = False


def _public_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``quartsess.<module>.<Name>`` (how annotations name a public class) to
    ``quartsess.<Name>``, where the reference documents it."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("quartsess."):
        return None
    name = target.rsplit(".", 1)[-1]
    if name not in quartsess.__all__ or target == f"quartsess.{name}":
        return None
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], f"quartsess.{name}", node, contnode
    )


def setup(app: Any) -> None:
    # Before the nitpick_ignore_regex check: a public name is resolved, not ignored.
    app.connect("missing-reference", _public_name, priority=400)
