"""``sqlite:///`` and ``sqlite+pysqlite:///`` URLs: SQLite is served by the standard
library's ``sqlite3`` whatever driver the URL names, so every SQLite URL SQLAlchemy
writes names the same file, for the app, ``quart sessions migrate`` and ``alembic``."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from quart import Quart

from quartsess import Session
from quartsess.stores.sql import SqlStore
from tests.conftest import SECRET
from tests.support import add_routes
from tests.test_alembic import alembic, x_args

SCHEMES = ["sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"]


def make_app(url: str, **config: object) -> Quart:
    app = add_routes(Quart(__name__))
    app.config.update(SECRET_KEY=SECRET, SESSION_DB_URL=url, TESTING=True, **config)
    Session(app)
    return app


def tables_in(database: Path) -> set[str]:
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}
    finally:
        connection.close()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_every_sqlite_url_serves_sessions_from_its_file(tmp_path: Path, scheme: str) -> None:
    database = tmp_path / "sessions.sqlite3"
    app = make_app(f"{scheme}:///{database}")
    store = app.extensions["quartsess"].store_for(app)
    assert isinstance(store, SqlStore) and store.writes_inline  # sqlite3 on the event loop
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await (await client.get("/visits")).get_json()) == {"visits": 1}
        assert (await (await client.get("/visits")).get_json()) == {"visits": 2}
    connection = sqlite3.connect(database)
    try:
        assert connection.execute("SELECT count(*) FROM quart_sessions").fetchone() == (1,)
    finally:
        connection.close()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_quart_sessions_migrate_takes_every_sqlite_url(tmp_path: Path, scheme: str) -> None:
    database = tmp_path / "migrated.sqlite3"
    app = make_app(f"{scheme}:///{database}", SESSION_CREATE_TABLE=False)
    runner = app.test_cli_runner()
    result = await asyncio.to_thread(runner.invoke, args=["sessions", "migrate"])
    assert result.exit_code == 0, result.output
    assert "quart_sessions: at revision 0003 (head)" in result.output
    assert {"quart_sessions", "quart_sessions_alembic_version"} <= tables_in(database)
    check = await asyncio.to_thread(runner.invoke, args=["sessions", "migrate", "check"])
    assert check.exit_code == 0, check.output
    async with app.test_app() as test_app:  # serves from the migrated table
        assert (await test_app.test_client().get("/visits")).status_code == 200


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"])
async def test_the_repositorys_alembic_takes_a_sqlite_url(tmp_path: Path, scheme: str) -> None:
    database = tmp_path / "alembic.sqlite3"
    output = await alembic(*x_args(f"{scheme}:///{database}", "via_alembic"), "upgrade", "head")
    assert "Running upgrade 0001 -> 0002" in output
    assert {"via_alembic", "via_alembic_alembic_version"} <= tables_in(database)
