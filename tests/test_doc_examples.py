"""Every code block of the documentation site (``docs/*.md``) and of the README is run or
checked here, each by what it claims.

``BLOCKS`` names a check for each block, by page and position; a block added, removed or
moved without its check fails :func:`test_every_code_block_has_its_check`. Python blocks
run as written (fragments in the namespace they assume: an ``app``, Quart's ``session``,
the app's own ``check_password``); ``quart ... sessions`` commands run against a SQLite
app of their own; ``pip install`` lines name extras that exist (the network is closed);
the repository's own commands name files and options that exist; included sample-app code
is exercised by the sample app's tests. Blocks that earlier tests already run as whole
test modules point at those tests.
"""

from __future__ import annotations

import asyncio
import gc
import re
import shlex
import sys
import textwrap
import tomllib
import types
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import Result
from quart import Quart, redirect, session
from quart.cli import ScriptInfo
from sqlalchemy import Column, Integer, MetaData, Table, create_engine
from sqlalchemy.engine import make_url

import quartsess
from quartsess import Session
from quartsess.cli import sessions_cli
from quartsess.stores.connections import effective_connect_args
from tests import test_docs, test_live_docs
from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)


@dataclass(frozen=True)
class Block:
    page: str  # "README.md" or "docs/<page>.md"
    index: int  # position among the page's fenced blocks
    lang: str
    code: str  # dedented


def blocks_of(page: str) -> list[Block]:
    text = (ROOT / page).read_text()
    return [
        Block(page, index, found.group("lang").strip(), textwrap.dedent(found.group("body")))
        for index, found in enumerate(FENCE.finditer(text))
    ]


def all_blocks() -> list[Block]:
    pages = ["README.md", *(f"docs/{path.name}" for path in sorted(DOCS.glob("*.md")))]
    return [block for page in pages for block in blocks_of(page)]


def block(page: str, index: int) -> Block:
    return blocks_of(page)[index]


# -- what the blocks run in -------------------------------------------------------------


def new_app(tmp_path: Path, **config: Any) -> Quart:
    """An app as the examples assume one: a secret key and a SQLite file of its own;
    quartsess is not set up yet (blocks may set settings first)."""
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        SESSION_DB_URL=f"sqlite:///{tmp_path / 'sessions.sqlite3'}",
        SESSION_PRUNE_INTERVAL=0,
        TESTING=True,
    )
    app.config.update(config)
    return app


def run_block(code: Block, namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(code.code, f"{code.page}#{code.index}", "exec"), namespace)  # noqa: S102
    return namespace


@dataclass
class User:
    id: int


async def check_password(*args: Any) -> User:
    """The app's own code in the examples: this one lets user 7 in."""
    return User(7)


def add_probe_routes(app: Quart) -> None:
    @app.get("/probe/user")
    async def whoami() -> dict[str, Any]:
        return {"user": session.get("user_id")}

    @app.post("/probe/visit")
    async def visit() -> str:
        session["visits"] = session.get("visits", 0) + 1
        return "ok"

    @app.post("/probe/seed-login/<int:user>")
    async def seed_login(user: int) -> str:
        session["user_id"] = user
        return "ok"


def cookie_of(response: Any, name: str = "session") -> str | None:
    for header in response.headers.getlist("Set-Cookie"):
        key, _, rest = header.partition("=")
        if key == name:
            return rest.split(";", 1)[0]
    return None


async def cli(app: Quart, line: str) -> Result:
    """``quart --app yourapp sessions ...`` on ``app``."""
    words = shlex.split(line.split("#", 1)[0])
    assert words[:4] == ["quart", "--app", "yourapp", "sessions"], line
    runner = app.test_cli_runner()
    info = ScriptInfo(create_app=lambda: app)
    return await asyncio.to_thread(runner.invoke, sessions_cli, words[4:], obj=info)


def command_lines(code: Block) -> list[str]:
    return [line.strip() for line in code.code.splitlines() if line.strip()]


def check_pip_install(line: str) -> None:
    """``pip install quartsess`` or ``'quartsess[extra]'``: the extra exists."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    words = shlex.split(line.split("#", 1)[0])
    assert words[:2] == ["pip", "install"], line
    for requirement in words[2:]:
        found = re.fullmatch(r"quartsess(?:\[(\w+)\])?", requirement)
        assert found, line
        if found.group(1):
            assert found.group(1) in extras["optional-dependencies"], line


# -- the checks, one per block ---------------------------------------------------------

Check = Callable[[Block, Path, pytest.MonkeyPatch], Awaitable[None]]


async def quick_start(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's and the quick start's app, as written: SQLite in instance/."""
    assert code.code == block("docs/quickstart.md", 1).code  # the same example in both
    monkeypatch.chdir(tmp_path)  # Quart's root (and instance/) for a module it cannot find
    app = run_block(code, {"__name__": "quickstart_example"})["app"]
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert await (await client.get("/")).get_data(as_text=True) == "visit #1"
        assert await (await client.get("/")).get_data(as_text=True) == "visit #2"
    assert (tmp_path / "instance" / "quartsess.sqlite3").is_file()


async def login_and_logout(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A login stores the user: the session gets a new ID; a logout deletes the cookie."""
    app = new_app(tmp_path)
    run_block(code, {"app": app, "session": session, "redirect": redirect,
                     "check_password": check_password})  # fmt: skip
    Session(app)
    add_probe_routes(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        before = cookie_of(await client.post("/probe/visit"))
        after = cookie_of(await client.post("/login"))
        assert before and after and after != before  # renewed, with no regenerate() call
        assert await (await client.get("/probe/user")).get_json() == {"user": 7}
        assert cookie_of(await client.post("/logout")) == ""
        assert await (await client.get("/probe/user")).get_json() == {"user": None}


async def user_sessions_page(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON "Your sessions" page: listing, "log out this device", "all other"."""
    app = new_app(tmp_path)
    run_block(code, {"app": app, "session": session})
    Session(app)
    add_probe_routes(app)
    async with app.test_app() as test_app:
        laptop, phone, tablet = (test_app.test_client() for _ in range(3))
        for client in (laptop, phone):
            await client.post("/probe/seed-login/7")
        listed = (await (await laptop.get("/sessions")).get_json())["sessions"]
        assert len(listed) == 2 and sum(item["this_device"] for item in listed) == 1
        [phones] = [item["handle"] for item in listed if not item["this_device"]]
        response = await laptop.post(f"/sessions/{phones}/revoke")
        assert await response.get_json() == {"logged_out": True}
        assert await (await phone.get("/probe/user")).get_json() == {"user": None}
        assert (await laptop.post(f"/sessions/{phones}/revoke")).status_code == 404
        await tablet.post("/probe/seed-login/7")
        response = await laptop.post("/sessions/revoke-others")
        assert await response.get_json() == {"logged_out": 1}
        assert await (await tablet.get("/probe/user")).get_json() == {"user": None}
        assert await (await laptop.get("/probe/user")).get_json() == {"user": 7}


async def anonymous_timeout(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = new_app(tmp_path)
    run_block(code, {"app": app, "timedelta": timedelta})
    Session(app)
    config = app.extensions["quartsess"].config
    assert (config.idle_timeout, config.anonymous_idle_timeout) == (7200, 1800)


async def users_commands(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line, on two sessions of user 42 and one of user 43."""
    expected = [
        "2 live sessions of user '42'.",  # list --user 42
        "Revoked 2 sessions.",  # revoke --user 42
        "Revoked 1 session.",  # revoke --handle HANDLE
        "Revoked 1 session.",  # revoke --user 42 --handle HANDLE: it is theirs
    ]
    lines = command_lines(code)
    assert len(lines) == len(expected)
    for number, (line, output) in enumerate(zip(lines, expected, strict=True)):
        app = new_app(tmp_path / str(number))
        Session(app)
        add_probe_routes(app)
        async with app.test_app() as test_app:
            for user in (42, 42, 43):
                await test_app.test_client().post(f"/probe/seed-login/{user}")
            [handle, _] = [s.handle for s in await app.extensions["quartsess"].user_sessions(42)]
        result = await cli(app, line.replace("HANDLE", handle))
        assert result.exit_code == 0, (line, result.output)
        assert result.output.splitlines()[0] == output, (line, result.output)


async def pip_lines(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for line in command_lines(code):
        check_pip_install(line)


async def migrate_lines(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pip install`` lines name an extra that exists; the ``quart`` lines run in turn
    on one app whose table comes from the migrations."""
    app = new_app(tmp_path, SESSION_CREATE_TABLE=False)
    Session(app)
    ran = 0
    for line in command_lines(code):
        if line.startswith("pip "):
            check_pip_install(line)
            continue
        result = await cli(app, line)
        assert result.exit_code == 0, (line, result.output)
        ran += 1
    assert ran
    async with app.test_app() as test_app:  # the table is there: the app serves
        add_probe_routes(app)
        assert (await test_app.test_client().post("/probe/visit")).status_code == 200


async def server_settings(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings for a database server: quartsess accepts them (no connection is made)."""
    app = new_app(tmp_path, SESSION_DB_URL="postgresql+asyncpg://user@db.invalid/app")
    run_block(code, {"app": app})
    Session(app)
    config = app.extensions["quartsess"].config
    for line in code.code.splitlines():
        found = re.match(r'app\.config\["(\w+)"\] = (.+)', line)
        assert found, line
        value = eval(found.group(2), {})  # noqa: S307 - a literal of our own docs
        field = {"SESSION_DB_URL": "db_url", "SESSION_ENGINE_OPTIONS": "engine_options"}.get(
            found.group(1), found.group(1).removeprefix("SESSION_").lower()
        )
        if field == "db_url":
            value = make_url(value)
        assert getattr(config, field) == value, line
    connect_args = effective_connect_args(config.db_url, config.engine_options)
    assert connect_args["timeout"] == 5  # quartsess's defaults stay under the app's


async def app_factory(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Session(app)``, then one ``Session()`` serving apps from a factory."""
    app = new_app(tmp_path)
    namespace = run_block(code, {"app": app, "Quart": Quart, "__name__": "factory_example"})
    assert isinstance(app.extensions["quartsess"], Session)
    apps = [
        namespace["create_app"](
            {"SECRET_KEY": SECRET, "SESSION_DB_URL": f"sqlite:///{tmp_path / f'{n}.sqlite3'}"}
        )
        for n in range(2)
    ]
    for made in apps:
        assert made.extensions["quartsess"] is namespace["sessions"]
        add_probe_routes(made)
        async with made.test_app() as test_app:
            assert (await test_app.test_client().post("/probe/visit")).status_code == 200


async def cookie_helper(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = new_app(tmp_path)
    run_block(code, {"app": app, "tenant_domain": lambda: "shop.example.test"})
    add_probe_routes(app)
    async with app.test_app() as test_app:
        response = await test_app.test_client().post("/probe/visit")
    [header] = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("session=")]
    assert "Domain=shop.example.test" in header


async def own_alembic(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """quartsess's table in your own Alembic's ``target_metadata``: autogenerate proposes
    it next to your tables (and the other table name of the comment works as well)."""
    assert code.code == block("docs/extension.md", 2).code  # the same in the README
    models = types.ModuleType("myapp.models")
    models.metadata = MetaData()  # type: ignore[attr-defined]
    Table("orders", models.metadata, Column("id", Integer, primary_key=True))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myapp", types.ModuleType("myapp"))
    monkeypatch.setitem(sys.modules, "myapp.models", models)
    target = run_block(code, {})["target_metadata"]
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            added = {
                diff[1].name for metadata in target for diff in compare_metadata(context, metadata)
                if diff[0] == "add_table"
            }  # fmt: skip
    finally:
        engine.dispose()
    assert added == {"orders", "quart_sessions"}
    assert quartsess.build_table(MetaData(), "my_sessions").name == "my_sessions"


async def in_place_change(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``session["cart"][item_id] += 1`` is saved without ``session.modified``."""
    app = new_app(tmp_path)
    Session(app)

    @app.post("/cart/<item_id>")
    async def add(item_id: str) -> str:
        session.setdefault("cart", {}).setdefault(item_id, 0)
        run_block(code, {"session": session, "item_id": item_id})
        return "ok"

    @app.get("/cart")
    async def cart() -> dict[str, Any]:
        return dict(session.get("cart", {}))

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/cart/tea")
        await client.post("/cart/tea")
        assert await (await client.get("/cart")).get_json() == {"tea": 2}


async def gc_freeze(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = new_app(tmp_path)
    Session(app)
    run_block(code, {"app": app})
    try:
        async with app.test_app():
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


async def hypercorn_toml(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings of the repository's ``hypercorn.toml``, as the page quotes them."""
    quoted = tomllib.loads(code.code)
    actual = tomllib.loads((ROOT / "hypercorn.toml").read_text())
    assert quoted == {key: actual[key] for key in quoted}


async def the_two_commands(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's set-up commands (they need the network, so they are not run here):
    the extras they install exist, and what they run is there."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [line] = command_lines(code)
    steps = [shlex.split(step) for step in line.split("&&")]
    assert steps[0] == ["python3", "-m", "venv", ".venv"]
    assert steps[1][:3] == [".venv/bin/pip", "install", "-e"]
    extra = re.fullmatch(r"\.\[(\w+)\]", steps[1][3])
    assert extra and extra.group(1) in extras["optional-dependencies"]
    if steps[2][0] == ".venv/bin/hypercorn":
        assert (
            steps[2][1:3] == ["--config", "hypercorn.toml"] and (ROOT / "hypercorn.toml").is_file()
        )
        from app import create_app

        app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": SECRET})
        assert steps[2][3] == "app:create_app()" and "quartsess" in app.extensions
    else:
        assert steps[2] == [".venv/bin/python", "-m", "pytest"]
        assert any(dep.startswith("pytest") for dep in extras["optional-dependencies"]["dev"])


async def bench_commands(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark commands (not run: they take minutes): their modules exist and take
    the options shown."""
    for line in command_lines(code):
        words = shlex.split(line.split("#", 1)[0])
        assert words[:3] == [".venv/bin/python", "-m", words[2]] and words[2].startswith("bench.")
        source = (ROOT / (words[2].replace(".", "/") + ".py")).read_text()
        for option in (word for word in words[3:] if word.startswith("--")):
            assert f'"{option}"' in source, line


async def sample_app_views(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Code included from the sample app (Sphinx checks that the object exists): the
    sample app's tests drive each of these routes."""
    assert code.lang == "{literalinclude} ../app/devices.py", code.lang
    [name] = re.findall(r":pyobject: (\w+)", code.code)
    route = {"show": '"/sessions/"', "revoke": '"/sessions/revoke"',
             "revoke_others": '"/sessions/revoke-others"'}[name]  # fmt: skip
    assert route in (ROOT / "tests" / "test_sample_app.py").read_text()


def run_by(test: Callable[..., Any]) -> Check:
    """A block an earlier test runs already (as a whole module, or with its own app)."""

    async def check(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        assert getattr(sys.modules[test.__module__], test.__name__) is test

    check.__name__ = f"run_by_{test.__name__}"
    return check


async def directive(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MyST directive (``{toctree}``, ``{include}``): no code; the site build checks it."""
    assert code.lang.startswith(("{toctree}", "{include}")), code.lang


async def exclusive_cart(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``@exclusive`` example: parallel adds of one product all count."""
    app = new_app(tmp_path)
    Session(app)
    run_block(code, {"app": app})

    @app.post("/start")
    async def start() -> str:
        session["cart"] = {}
        return "ok"

    @app.get("/cart")
    async def cart() -> dict[str, Any]:
        return dict(session.get("cart", {}))

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        answers = await asyncio.gather(*(client.post("/cart/add") for _ in range(20)))
        assert [answer.status_code for answer in answers] == [200] * 20
        assert await (await client.get("/cart")).get_json() == {"tea": 20}


async def step_up_flow(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An old login is sent to confirm its password, which lets it through."""
    clock = types.SimpleNamespace(now=1_800_000_000.0)
    app = new_app(tmp_path)
    real_session = quartsess.Session

    def clocked(app: Quart) -> Session:
        return real_session(app, clock=lambda: clock.now)

    passwords = {7: "secret"}

    async def check(user: int, password: str) -> bool:
        return passwords.get(user) == password

    monkeypatch.setattr(quartsess, "Session", clocked)  # the block imports it from there
    run_block(code, {"app": app, "check_password": check})
    monkeypatch.setattr(quartsess, "Session", real_session)
    add_probe_routes(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/probe/seed-login/7")
        assert (await client.post("/account/delete")).status_code == 200
        clock.now += 601
        sent = await client.post("/account/delete")
        assert sent.status_code == 302
        assert sent.headers["Location"] == "/confirm-password?next=/account/delete"
        wrong = await client.post("/confirm-password", form={"password": "guess"})
        assert wrong.status_code == 403
        right = await client.post(
            "/confirm-password?next=/account/delete", form={"password": "secret"}
        )
        assert right.headers["Location"] == "/account/delete"
        assert (await client.post("/account/delete")).status_code == 200


async def app_engine(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Session(app, engine=...)`` as written, its URL pointed at the test PostgreSQL:
    the sessions run on that engine's pool, and the app's own engine stays usable."""
    import sqlalchemy.ext.asyncio as asyncio_ext

    from tests.conftest import require_server
    from tests.tables import drop_tables_of, unique_table

    server = make_url(await require_server("postgresql"))
    real = asyncio_ext.create_async_engine

    def on_the_test_server(url: str, **options: Any) -> Any:
        return real(server, **options)

    monkeypatch.setattr(asyncio_ext, "create_async_engine", on_the_test_server)
    table = unique_table("qs_docs")
    app = Quart(__name__)
    app.config.update(SECRET_KEY=SECRET, SESSION_TABLE=table, SESSION_PRUNE_INTERVAL=0)
    namespace = run_block(code, {"app": app, "Session": Session})
    add_probe_routes(app)
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await client.post("/probe/visit")
            assert app.extensions["quartsess"].config.engine is namespace["engine"]
    finally:
        await namespace["engine"].dispose()
        await drop_tables_of(server.render_as_string(False), table)


async def sqlite_engine_listener(
    code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connect listener for an app's own SQLite engine sets what it says."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite3'}")
    run_block(code, {"engine": engine})
    try:
        async with engine.connect() as connection:
            mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
            timeout = (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar()
        assert (mode, timeout) == ("wal", 10000)
    finally:
        await engine.dispose()


async def close_code_script(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's script tells a logout by the close code quartsess sends, as the sample
    app's does."""
    from quartsess.live import CLOSE_CODE

    assert f"event.code === {CLOSE_CODE}" in code.code
    script = (ROOT / "app" / "static" / "visits.js").read_text()
    assert f"SESSION_ENDED = {CLOSE_CODE}" in script and "event.code === SESSION_ENDED" in script


async def audit_lines(code: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit log lines shown are the shape the sample app writes."""
    from app import audit

    lines = [line.split(": ", 1)[1] for line in code.code.strip().splitlines()]
    shapes = [
        r"session \S{8} changed user - -> '\w+', from .+ on .+ at [\d.]+",
        r"session \S{8} of user '\w+' ended: revoked, from .+ on .+ at [\d.]+",
    ]
    for shape, line in zip(shapes, lines, strict=True):
        assert re.fullmatch(shape, line), line
    assert audit.HANDLE_PREFIX == 8


TESTING_EXAMPLES = run_by(test_docs.test_the_testing_examples_pass_as_the_test_modules_they_are)
PROMETHEUS_RECIPE = run_by(test_live_docs.test_the_prometheus_recipe_counts_sessions)
ADOPTION_SNIPPET = run_by(test_docs.test_the_cookie_session_adoption_snippet_carries_a_user_over)

#: (page, index) -> (a phrase the block holds, so a moved block is noticed, and its check)
BLOCKS: dict[tuple[str, int], tuple[str, Check]] = {
    ("README.md", 0): ("visit #", quick_start),
    ("README.md", 1): ("hypercorn", the_two_commands),
    ("README.md", 2): ("pytest", the_two_commands),
    ("README.md", 3): ("MemorySession", TESTING_EXAMPLES),
    ("README.md", 4): ("engine=engine", app_engine),
    ("README.md", 5): ("sessions migrate check", migrate_lines),
    ("README.md", 6): ("quartsess.metadata", own_alembic),
    ("README.md", 7): ("bench.run", bench_commands),
    ("docs/changelog.md", 0): ("", directive),
    ("docs/deployment.md", 0): ("workers", hypercorn_toml),
    ("docs/deployment.md", 1): ("pool_size", server_settings),
    ("docs/deployment.md", 2): ("/var/run/postgresql", server_settings),
    ("docs/deployment.md", 3): ("statement_cache_size", server_settings),
    ("docs/deployment.md", 4): ("engine.dispose()", app_engine),
    ("docs/deployment.md", 5): ("busy_timeout", sqlite_engine_listener),
    ("docs/extension.md", 0): ("create_app", app_factory),
    ("docs/extension.md", 1): ("PerTenantCookies", cookie_helper),
    ("docs/extension.md", 2): ("quartsess.metadata", own_alembic),
    ("docs/index.md", 0): ("quickstart", directive),
    ("docs/index.md", 1): ("deployment", directive),
    ("docs/index.md", 2): ("api", directive),
    ("docs/migrating.md", 0): ("adopt_cookie_session", ADOPTION_SNIPPET),
    ("docs/performance.md", 0): ("gc.freeze()", gc_freeze),
    ("docs/quickstart.md", 0): ("quartsess[postgresql]", pip_lines),
    ("docs/quickstart.md", 1): ("visit #", quick_start),
    ("docs/quickstart.md", 2): ("/logout", login_and_logout),
    ("docs/quickstart.md", 3): ("SESSION_CREATE_TABLE", server_settings),
    ("docs/quickstart.md", 4): ("sessions migrate", migrate_lines),
    ("docs/live.md", 0): ("event.code === 1008", close_code_script),
    ("docs/live.md", 1): ("count_sessions", PROMETHEUS_RECIPE),
    ("docs/live.md", 2): ("app.audit", audit_lines),
    ("docs/session.md", 0): ('session["cart"][item_id] += 1', in_place_change),
    ("docs/session.md", 1): ("@exclusive", exclusive_cart),
    ("docs/session.md", 2): ("mark_authenticated", step_up_flow),
    ("docs/testing.md", 0): ("MemorySession", TESTING_EXAMPLES),
    ("docs/testing.md", 1): ("clock", TESTING_EXAMPLES),
    ("docs/testing.md", 2): ("caplog", TESTING_EXAMPLES),
    ("docs/users.md", 0): ("SESSION_USER_KEY", login_and_logout),
    ("docs/users.md", 1): ("keep_current=True", user_sessions_page),
    ("docs/users.md", 2): ("SESSION_ANONYMOUS_IDLE_TIMEOUT", anonymous_timeout),
    ("docs/users.md", 3): ("sessions revoke --handle HANDLE", users_commands),
    ("docs/users.md", 4): (":pyobject: show", sample_app_views),
    ("docs/users.md", 5): (":pyobject: revoke\n", sample_app_views),
    ("docs/users.md", 6): (":pyobject: revoke_others", sample_app_views),
}  # fmt: skip


def test_every_code_block_has_its_check() -> None:
    found = {(code.page, code.index): code for code in all_blocks()}
    assert sorted(found) == sorted(BLOCKS)
    for key, (phrase, _) in BLOCKS.items():
        assert phrase in found[key].code or phrase in found[key].lang, key


def _cases() -> Iterator[Any]:
    for (page, index), (_, check) in BLOCKS.items():
        yield pytest.param(page, index, check, id=f"{page}#{index}-{check.__name__}")


@pytest.mark.parametrize(("page", "index", "check"), list(_cases()))
async def test_the_code_block_does_what_it_says(
    page: str, index: int, check: Check, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await check(block(page, index), tmp_path, monkeypatch)
