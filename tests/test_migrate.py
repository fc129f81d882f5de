"""``quart sessions migrate`` from the built wheel, in a fresh venv outside the repository,
against the app's configured database and table: SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.cli import ScriptInfo
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from quartsess.cli import sessions_cli
from tests.conftest import SECRET, AppFactory
from tests.installed import ROOT, FreshVenv, build, fresh_venv
from tests.support import add_routes, helper_engine, stored_rows
from tests.test_alembic import current_revision, describe

YOURAPP = f"""
import os
from quart import Quart
from quartsess import Session

app = Quart(__name__)
app.config.update(
    SECRET_KEY={SECRET!r},
    SESSION_DB_URL=os.environ["YOURAPP_DB_URL"],
    SESSION_TABLE=os.environ["YOURAPP_TABLE"],
    SESSION_CREATE_TABLE=False,
    SESSION_PRUNE_INTERVAL=0,
)
Session(app)
"""

COLUMNS = [
    *("id_hash", "payload", "version", "created_at", "touched_at", "expires_at"),
    *("handle", "user_hash", "client"),
    *("lease_owner", "lease_until"),
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """The built wheel in a fresh venv, with a ``yourapp.py`` in its working folder."""
    dist = build(tmp_path_factory.mktemp("dist"))
    created = fresh_venv(tmp_path_factory.mktemp("fresh"), dist.wheel)
    (created.workdir / "yourapp.py").write_text(YOURAPP)
    return created


@pytest.fixture
async def engine(db_url: str, table_name: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test database; drops this test's Alembic version table after."""
    engine = helper_engine(db_url)
    yield engine
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {table_name}_alembic_version"))
    finally:
        await engine.dispose()


class YourApp:
    """``quart --app yourapp sessions migrate ...`` in the fresh venv."""

    def __init__(self, installed: FreshVenv, db_url: str, table_name: str) -> None:
        self.installed = installed
        self.env = {"YOURAPP_DB_URL": db_url, "YOURAPP_TABLE": table_name}

    async def migrate(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            self.installed.run,
            *("python", "-m", "quart", "--app", "yourapp", "sessions", "migrate", *args),
            extra_env=self.env,
            check=False,
        )

    async def succeeds(self, *args: str) -> str:
        result = await self.migrate(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout + result.stderr

    async def fails(self, *args: str) -> str:
        result = await self.migrate(*args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout + result.stderr


async def test_migrate_upgrade_current_check_downgrade_stamp_from_the_wheel(
    installed: FreshVenv, db_url: str, table_name: str, engine: AsyncEngine
) -> None:
    yourapp = YourApp(installed, db_url, table_name)
    pending = await yourapp.fails("check")
    assert "not up to date" in pending
    assert f"{table_name}: no revision recorded" in await yourapp.succeeds("current")

    output = await yourapp.succeeds()  # no subcommand: upgrade head
    assert "Running upgrade  -> 0001" in output and "Running upgrade 0002 -> 0003" in output
    assert f"{table_name}: at revision 0003 (head)" in output
    assert (await describe(engine, table_name))["columns"] == COLUMNS
    assert await current_revision(engine, table_name) == ["0003"]
    assert "Running upgrade" not in await yourapp.succeeds("upgrade")  # nothing left to do
    assert f"{table_name}: at revision 0003 (head)" in await yourapp.succeeds("current")
    assert "matches quartsess's definition" in await yourapp.succeeds("check")

    index = f"ix_{table_name}_expires_at"
    on_table = f" ON {table_name}" if db_url.startswith("mysql") else ""
    async with engine.begin() as connection:
        await connection.execute(text(f"DROP INDEX {index}{on_table}"))
    drift = await yourapp.fails("check")
    assert "add_index" in drift
    assert index in drift
    async with engine.begin() as connection:
        await connection.execute(text(f"CREATE INDEX {index} ON {table_name} (expires_at)"))

    assert "Running downgrade 0001 -> " in await yourapp.succeeds("downgrade", "base")
    assert await describe(engine, table_name) == {"exists": False}
    assert await describe(engine, f"{table_name}_alembic_version") == {"exists": False}

    # Stamped at head without the table: check sees the table missing.
    assert f"{table_name}: at revision 0003 (head)" in await yourapp.succeeds("stamp", "head")
    assert await describe(engine, table_name) == {"exists": False}
    assert "add_table" in await yourapp.fails("check")


async def test_an_unknown_revision_and_an_unreachable_database_are_clean_errors(
    installed: FreshVenv, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sessions.sqlite3'}"
    yourapp = YourApp(installed, url, "quart_sessions")
    assert "Can't locate revision identified by '0999'" in await yourapp.fails("upgrade", "0999")
    down = YourApp(installed, "postgresql+asyncpg://nobody@127.0.0.1:1/none", "quart_sessions")
    assert "the session database postgresql+asyncpg://nobody@127.0.0.1:1/none failed" in (
        await down.fails()
    )


async def test_without_alembic_the_command_says_what_to_install(installed: FreshVenv) -> None:
    # Alembic made unimportable, as in an installation without the alembic extra.
    without_alembic = (
        "import sys; sys.modules['alembic'] = None; "
        "from quart.cli import main; "
        "sys.argv = ['quart', '--app', 'yourapp', 'sessions', 'migrate']; main()"
    )
    result = await asyncio.to_thread(
        installed.run,
        "python",
        "-c",
        without_alembic,
        extra_env={"YOURAPP_DB_URL": "sqlite+aiosqlite://", "YOURAPP_TABLE": "quart_sessions"},
        check=False,
    )
    assert result.returncode == 1
    assert "pip install 'quartsess[alembic]'" in result.stderr
    assert "Traceback" not in result.stderr


async def invoke(app: Quart, *args: str) -> Any:
    runner = app.test_cli_runner()
    return await asyncio.to_thread(runner.invoke, args=["sessions", "migrate", *args])


async def test_from_the_source_checkout_it_runs_the_repositorys_alembic_folder(
    make_app: AppFactory, table_name: str, engine: AsyncEngine
) -> None:
    """In this (editable) checkout, the same command runs alembic/ itself; an app then
    serves from the migrated table without creating it."""
    app = add_routes(make_app(SESSION_CREATE_TABLE=False, SESSION_PRUNE_INTERVAL=0))
    result = await invoke(app)
    assert result.exit_code == 0, result.output
    assert f"{table_name}: at revision 0003 (head)" in result.output
    assert await current_revision(engine, table_name) == ["0003"]
    async with app.test_app() as test_app:
        assert (await test_app.test_client().get("/visits")).status_code == 200
        assert len(await stored_rows(app)) == 1
    assert (ROOT / "alembic" / "versions" / "0001_create_sessions_table.py").is_file()


async def test_downgrade_base_leaves_nothing_behind(
    make_app: AppFactory, table_name: str, engine: AsyncEngine
) -> None:
    """``migrate downgrade base`` drops the table and its ``<table>_alembic_version``
    too: the database is as it was before the first ``migrate``; upgrading again works."""
    app = make_app(SESSION_CREATE_TABLE=False, SESSION_PRUNE_INTERVAL=0)
    version_table = f"{table_name}_alembic_version"
    assert (await invoke(app)).exit_code == 0
    assert (await describe(engine, version_table))["exists"]
    result = await invoke(app, "downgrade", "base")
    assert result.exit_code == 0, result.output
    assert f"{table_name}: no revision recorded" in result.output
    assert await describe(engine, table_name) == {"exists": False}
    assert await describe(engine, version_table) == {"exists": False}
    again = await invoke(app, "upgrade")
    assert again.exit_code == 0, again.output
    assert await current_revision(engine, table_name) == ["0003"]
    result = await invoke(app, "downgrade", "0001")  # not base: the record stays
    assert result.exit_code == 0, result.output
    assert await current_revision(engine, table_name) == ["0001"]
    assert (await invoke(app, "downgrade", "base")).exit_code == 0
    assert await describe(engine, version_table) == {"exists": False}


async def test_an_app_without_quartsess_gets_a_clean_message() -> None:
    runner = Quart(__name__).test_cli_runner()
    bare = Quart(__name__)
    bare.config["SECRET_KEY"] = SECRET
    info = ScriptInfo(create_app=lambda: bare)
    result = await asyncio.to_thread(runner.invoke, sessions_cli, ["migrate"], obj=info)
    assert result.exit_code == 1
    assert "quartsess is not set up on this app" in result.output
