"""The documentation site: Sphinx builds it with warnings as errors and every
cross-reference checked (-W -n), its internal links all land, the configuration reference
matches quartsess's settings, the API reference covers ``quartsess.__all__``, a snippet it
offers works, and Chromium shows the built index (screenshot in
test-artifacts/screenshots/)."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from playwright.async_api import async_playwright, expect
from quart import Quart
from quart import session as quart_session

import quartsess
from quartsess.config import FOREIGN_KEYS, OWN_KEYS, QUART_KEYS
from tests.conftest import SECRET
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 300
PAGES = [
    "quickstart", "configuration", "session", "users", "extension", "testing", "deployment",
    "security", "migrating", "performance", "reliability", "api", "changelog",
]  # fmt: skip


@dataclass(frozen=True)
class Site:
    html: Path
    seconds: float


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """``sphinx-build -W -n --keep-going -b html docs <tmp>``: any warning fails."""
    out = tmp_path_factory.mktemp("docs") / "html"
    doctrees = out.parent / "doctrees"
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603 - fixed argument list
        [
            sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q", "-b", "html",
            "-d", str(doctrees), str(DOCS), str(out),
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return Site(html=out, seconds=time.monotonic() - started)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id":
                self.ids.add(value)
            elif (name == "href" and tag in {"a", "link"}) or (name == "src" and tag != "a"):
                self.links.append(value)


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


def test_the_site_builds_with_every_page(site: Site) -> None:
    for page in ["index", *PAGES]:
        assert (site.html / f"{page}.html").is_file(), page
    index = (site.html / "index.html").read_text()
    for page in PAGES:
        assert f'href="{page}.html"' in index, page


def test_every_internal_link_and_anchor_lands(site: Site) -> None:
    pages = {page: _parse(page) for page in site.html.rglob("*.html")}
    broken = []
    checked = 0
    for page, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                continue  # external: the network is closed, not checked here
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if not target.is_relative_to(site.html.resolve()) or not target.exists():
                broken.append(f"{page.name}: {link}")
                continue
            checked += 1
            if parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.name}: {link} (no such anchor)")
    assert broken == []
    assert checked > 100  # the check did look at the site's links


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table under ``## heading``."""
    section = markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _literal(cell: str) -> Any:
    """The first ``code`` of a cell, as a Python value where it is one."""
    found = re.search(r"`([^`]+)`", cell)
    assert found, cell
    try:
        return ast.literal_eval(found.group(1))
    except (ValueError, SyntaxError):
        return found.group(1)


def _names(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def test_the_configuration_reference_matches_quartsess_settings() -> None:
    """Every setting, its SessionConfig field and its default, checked through the public
    names (OWN_KEYS, QUART_KEYS, SessionConfig) so the page cannot drift."""
    page = (DOCS / "configuration.md").read_text()
    own = {_literal(row[0]): row for row in _table(page, "quartsess's settings")}
    assert set(own) == OWN_KEYS
    fields = {field.name for field in dataclasses.fields(quartsess.SessionConfig)}
    documented_fields = set().union(*(_names(row[2]) for row in own.values()))
    # One field is not a setting, and has its own section: Session(app, engine=...).
    assert documented_fields | {"engine"} == fields
    assert "`engine`" in _section(page, "The app's own engine")

    instance = "/srv/app/instance"
    defaults = quartsess.SessionConfig.from_mapping({"SECRET_KEY": SECRET}, instance_path=instance)
    assert len(defaults.encryption_keys) == 1  # derived from SECRET_KEY
    for key, (_, default, field_cell, meaning) in own.items():
        assert meaning, key
        if default == "derived":
            continue
        (field,) = _names(field_cell)
        actual = getattr(defaults, field)
        if field == "db_url":
            actual = actual.render_as_string(hide_password=False)
            assert _literal(default).replace("<instance>", instance) == actual
        else:
            assert _literal(default) == actual, key

    quart_defaults = Quart(__name__).config
    quart = {_literal(row[0]): row for row in _table(page, "Quart's settings")}
    assert set(quart) >= QUART_KEYS
    for key, (_, default, meaning) in quart.items():
        assert key in quart_defaults, key
        assert meaning, key
        if key in QUART_KEYS:
            assert _literal(default) == quart_defaults[key], key


def test_the_api_reference_documents_every_public_name(site: Site) -> None:
    ids = _parse(site.html / "api.html").ids
    missing = [name for name in quartsess.__all__ if f"quartsess.{name}" not in ids]
    assert missing == []


def test_the_readme_links_to_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "https://github.com/quartsess/quartsess/tree/main/docs" in readme


async def test_the_cookie_session_adoption_snippet_carries_a_user_over(tmp_path: Path) -> None:
    """docs/migrating.md's snippet: a user logged in with Quart's signed cookie is still
    logged in after the switch, under a quartsess ID, and the old cookie is deleted."""
    page = (DOCS / "migrating.md").read_text()
    found = re.search(r"```python\n(.*?)```", page, re.S)
    assert found
    snippet = found.group(1)

    old = Quart(__name__)
    old.secret_key = SECRET

    @old.get("/login")
    async def login() -> str:
        quart_session["user_id"] = 7
        return "ok"

    async with old.test_app() as test_app:
        response = await test_app.test_client().get("/login")
        old_cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]

    app = Quart(__name__)
    app.secret_key = SECRET
    app.config.update(
        SESSION_DB_URL=f"sqlite+aiosqlite:///{tmp_path / 'sessions.sqlite3'}",
        SESSION_PRUNE_INTERVAL=0,
        TESTING=True,
    )
    quartsess.Session(app)
    exec(compile(snippet, "migrating.md", "exec"), {"app": app})  # noqa: S102 - our own docs

    @app.get("/me")
    async def me() -> str:
        return str(quart_session.get("user_id"))

    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.get("/me", headers={"Cookie": f"session={old_cookie}"})
        assert await response.get_data(as_text=True) == "7"
        cookies = response.headers.getlist("Set-Cookie")
        assert any(c.startswith("session=;") for c in cookies), cookies
        assert any(c.startswith("sid=") for c in cookies), cookies
        response = await client.get("/me")  # the quartsess cookie alone now
        assert await response.get_data(as_text=True) == "7"


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def _section(markdown: str, heading: str) -> str:
    return markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_testing_examples_pass_as_the_test_modules_they_are(tmp_path: Path) -> None:
    """README's "Testing your app" and every example of docs/testing.md, each written out as
    a test module and run by pytest (pytest-asyncio auto mode, warnings as errors)."""
    readme = _python_blocks(_section((ROOT / "README.md").read_text(), "Testing your app"))
    page = _python_blocks((DOCS / "testing.md").read_text())
    assert len(readme) == 1 and len(page) == 3
    assert readme[0] == page[0]  # the README shows the page's first example
    for index, block in enumerate([*readme, *page]):
        (tmp_path / f"test_example_{index}.py").write_text(block)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    result = subprocess.run(  # noqa: S603 - fixed argument list
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout, result.stdout  # 2 + 2 (sqlite, memory), 1, 1


def test_every_foreign_setting_the_migration_tables_name_is_warned_about() -> None:
    """The Flask-Session and Quart-Session settings in README's table and docs/migrating.md
    are the ones quartsess recognises at start-up (quartsess.config.FOREIGN_KEYS)."""
    readme = _section((ROOT / "README.md").read_text(), "Coming from another session library")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in readme.splitlines()
        if line.startswith("|")
    ]
    assert rows[0][2:4] == ["Flask-Session", "Quart-Session"]
    named = set().union(*(_names(row[2]) | _names(row[3]) for row in rows[2:]))
    page = (DOCS / "migrating.md").read_text()
    for heading in ("From Flask-Session", "From Quart-Session"):
        named |= set().union(*(_names(row[0]) for row in _table(page, heading)))
    foreign = {name.split(" ")[0] for name in named if name.startswith("SESSION_")}
    assert len(foreign) > 20
    assert sorted(foreign - set(FOREIGN_KEYS)) == []


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def test_chromium_shows_the_built_index(site: Site, chromium: Any) -> None:
    context = await chromium.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto((site.html / "index.html").as_uri())
        await expect(page).to_have_title(re.compile(r"quartsess"))
        await expect(page.get_by_role("heading", name="quartsess", level=1)).to_be_visible()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "docs-index.png"), full_page=True)

        await page.locator(".sidebar-tree").get_by_role("link", name="Configuration").click()
        await expect(page).to_have_url(re.compile(r"configuration\.html$"))
        await expect(page.get_by_role("cell", name="SESSION_DB_URL", exact=True)).to_be_visible()
        assert errors == []
    finally:
        await context.close()


def _prose(markdown: str) -> str:
    """The text of a page without its fenced blocks, one paragraph per line."""
    text = re.sub(r"^( *)```.*?^\1```", "", markdown, flags=re.S | re.M)
    return re.sub(r"[ \t]+", " ", re.sub(r"(?<!\n)\n(?!\n)", " ", text))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?:;])\s+(?=[A-Z`*{(\"])", text) if s.strip()]


def test_user_sessions_have_a_page_that_covers_them() -> None:
    """Binding, listing, revoking, the cap, the anonymous timeout, the CLI, and the sample
    app's "Your sessions" page as the example; the quick start and the session page lead
    to it."""
    page = (DOCS / "users.md").read_text()
    for topic in (
        "SESSION_USER_KEY", "user_sessions", "revoke_session", "revoke_user_sessions",
        "keep_current=True", "SESSION_MAX_PER_USER", "SESSION_ANONYMOUS_IDLE_TIMEOUT",
        "SESSION_RECORD_CLIENT", "SessionInfo", "sessions list --user", "sessions revoke --user",
        "sessions revoke --handle", "```{literalinclude} ../app/devices.py",
    ):  # fmt: skip
        assert topic in page, topic
    for name in re.findall(r":pyobject: (\w+)", page):
        assert f"async def {name}(" in (ROOT / "app" / "devices.py").read_text(), name
    for other in ("quickstart.md", "session.md"):
        assert "{doc}`users`" in (DOCS / other).read_text(), other


def _command_names(group: Any, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        names.add(f"{prefix}{name}")
        if hasattr(command, "commands"):
            names |= _command_names(command, f"{prefix}{name} ")
    return names


def _documented_commands(markdown: str) -> set[str]:
    """What the first cell of each row of the "Command line" table names, as
    ``"revoke"`` or ``"migrate upgrade"``."""
    rows = _table(markdown, "Command line")
    named = set()
    for row in rows:
        found = re.match(r"`quart sessions ([a-z-]+(?: [a-z]+)?)", row[0])
        assert found, row[0]
        words = found.group(1).split()
        named |= {words[0], " ".join(words)}
    return named


def test_the_cli_tables_list_every_command() -> None:
    from quartsess.cli import sessions_cli

    commands = _command_names(sessions_cli)
    assert {"list", "revoke", "derived-key", "migrate upgrade"} <= commands
    assert commands <= _documented_commands((DOCS / "extension.md").read_text())
    top_level = {name for name in commands if " " not in name}
    assert top_level <= _documented_commands((ROOT / "README.md").read_text())


def _doc_texts() -> dict[str, str]:
    pages = {f"docs/{page.name}": page.read_text() for page in sorted(DOCS.glob("*.md"))}
    return {"README.md": (ROOT / "README.md").read_text(), **pages}


def test_keep_current_is_never_log_out_everywhere() -> None:
    """``revoke_user_sessions(user, keep_current=True)`` keeps this device: "log out all
    other devices"; "log out everywhere" is without it."""
    checked = 0
    for name, text in _doc_texts().items():
        prose = _prose(text)
        for found in re.finditer(r"keep_current=True", prose):
            said = re.split(r";|\.\s", prose[found.end() :], maxsplit=1)[0]
            assert "everywhere" not in said, (name, said)
            checked += 1
    assert checked >= 3


def test_the_quart_version_the_docs_name_is_the_one_required() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [quart] = [d for d in project["dependencies"] if re.match(r"quart\b", d)]
    required = re.search(r">=\s*([\d.]+)", quart)
    assert required
    page = (DOCS / "quickstart.md").read_text()
    named = re.search(r"Python ([\d.]+) or newer and Quart ([\d.]+) or newer", page)
    assert named, "quickstart names the Python and Quart versions"
    assert named.group(2) == required.group(1)
    assert project["requires-python"] == f">={named.group(1)}"


LOGIN = re.compile(r"\blog(?:ging)?[ -]?ins?\b|\blogins?\b", re.I)


def _code_texts() -> dict[str, str]:
    """Docstrings and messages of the library, as prose."""
    texts = {}
    for path in sorted((ROOT / "quartsess").rglob("*.py")):
        strings = [
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ]
        texts[str(path.relative_to(ROOT))] = "\n\n".join(strings)
    return texts


def test_one_rule_about_regenerate_on_login_everywhere() -> None:
    """A login needs no ``regenerate()`` when the user is stored at ``SESSION_USER_KEY``
    (a change of user renews the ID). No page, docstring or message tells to call it on
    login without that condition, and the pages that teach logins state the rule."""
    for name, text in {**_doc_texts(), **_code_texts()}.items():
        for sentence in _sentences(_prose(text)):
            tells = re.search(r"\bcall\b", sentence, re.I) and "regenerate" in sentence
            if tells and LOGIN.search(sentence):
                assert "SESSION_USER_KEY" in sentence, (name, sentence)
    for name in ("README.md", "docs/quickstart.md", "docs/session.md", "docs/users.md",
                 "docs/security.md"):  # fmt: skip
        rule = [
            sentence
            for sentence in _sentences(_prose(_doc_texts()[name]))
            if "needs no `session.regenerate()` when the user is stored at `SESSION_USER_KEY`"
            in sentence
            and LOGIN.search(sentence)
        ]
        assert rule, name
