"""Alembic owns the schema: upgrade/downgrade on every backend, and no drift from
``quartsess.schema.build_table``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quartsess.schema import build_table
from tests.conftest import AppFactory, FakeClock
from tests.support import add_routes, stored_rows

ROOT = Path(__file__).resolve().parent.parent


async def alembic(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the ``alembic`` command of this checkout; returns its output, fails on error."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        "-c",
        str(ROOT / "alembic.ini"),
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text_output = output.decode()
    assert process.returncode == 0, text_output
    return text_output


def x_args(db_url: str, table_name: str) -> list[str]:
    return ["-x", f"url={db_url}", "-x", f"table={table_name}"]


async def migrate(db_url: str, table_name: str, action: str, target: str) -> None:
    """``alembic -x url=... -x table=... <action> <target>`` through Alembic's command
    API, in a thread (env.py runs its own event loop), without touching logging."""
    config = Config(str(ROOT / "alembic.ini"))
    config.cmd_opts = argparse.Namespace(x=[f"url={db_url}", f"table={table_name}"])
    config.attributes["configure_logger"] = False
    await asyncio.to_thread(getattr(command, action), config, target)


@pytest.fixture
async def engine(db_url: str, table_name: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test database; drops this test's Alembic version table after."""
    engine = create_async_engine(db_url)
    yield engine
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {table_name}_alembic_version"))
    finally:
        await engine.dispose()


async def describe(engine: AsyncEngine, table_name: str) -> dict[str, Any]:
    def inspect_sync(connection: Connection) -> dict[str, Any]:
        inspector = inspect(connection)
        if not inspector.has_table(table_name):
            return {"exists": False}
        return {
            "exists": True,
            "columns": [column["name"] for column in inspector.get_columns(table_name)],
            "primary_key": inspector.get_pk_constraint(table_name)["constrained_columns"],
            "indexes": {
                index["name"]: index["column_names"] for index in inspector.get_indexes(table_name)
            },
        }

    async with engine.connect() as connection:
        return await connection.run_sync(inspect_sync)


async def current_revision(engine: AsyncEngine, table_name: str) -> list[str]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(f"SELECT version_num FROM {table_name}_alembic_version")  # noqa: S608
        )
        return [row[0] for row in result]


COLUMNS_0001 = ["id_hash", "payload", "version", "created_at", "touched_at", "expires_at"]


async def test_upgrade_head_creates_the_table_and_downgrade_base_drops_it(
    db_url: str, table_name: str, engine: AsyncEngine
) -> None:
    await migrate(db_url, table_name, "upgrade", "head")
    described = await describe(engine, table_name)
    assert described == {
        "exists": True,
        "columns": [*COLUMNS_0001, "handle", "user_hash", "client", "lease_owner", "lease_until"],
        "primary_key": ["id_hash"],
        "indexes": {
            f"ix_{table_name}_expires_at": ["expires_at"],
            f"ix_{table_name}_user_hash": ["user_hash"],
            f"ux_{table_name}_handle": ["handle"],
        },
    }
    assert await current_revision(engine, table_name) == ["0003"]
    await migrate(db_url, table_name, "downgrade", "0002")
    assert (await describe(engine, table_name))["columns"] == [
        *COLUMNS_0001,
        *("handle", "user_hash", "client"),
    ]
    await migrate(db_url, table_name, "downgrade", "0001")
    assert (await describe(engine, table_name))["columns"] == COLUMNS_0001

    await migrate(db_url, table_name, "upgrade", "head")  # nothing left to do
    await migrate(db_url, table_name, "downgrade", "base")
    assert await describe(engine, table_name) == {"exists": False}
    assert await describe(engine, f"{table_name}_alembic_version") == {"exists": False}


async def test_the_migration_matches_build_table(
    db_url: str, table_name: str, engine: AsyncEngine
) -> None:
    """Alembic's autogenerate finds nothing to change between the migrated table and the
    table quartsess defines: the two cannot drift apart unnoticed."""
    await migrate(db_url, table_name, "upgrade", "head")

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": lambda name, type_, _parent: type_ != "table" or name == table_name,
            },
        )
        metadata = MetaData()
        build_table(metadata, table_name)
        return list(compare_metadata(context, metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_sessions_of_revision_0001_survive_the_upgrade_to_0002(
    db_url: str,
    table_name: str,
    engine: AsyncEngine,
    make_app: AppFactory,
    caplog: Any,
    clock: FakeClock,
) -> None:
    """Rows written under 0001 stay readable after ``upgrade head``; an app on a 0001
    table says at start-up what to run instead of failing per request."""
    await migrate(db_url, table_name, "upgrade", "0001")
    app = add_routes(make_app(SESSION_PRUNE_INTERVAL=0))
    with caplog.at_level(logging.ERROR, logger="quartsess"):
        async with app.test_app() as test_app:
            [startup] = [r.getMessage() for r in caplog.records if r.name == "quartsess"]
            assert startup.startswith(f"table outdated: the sessions table {table_name!r}")
            assert "quart sessions migrate" in startup
            assert (await test_app.test_client().get("/visits")).status_code == 503
    # Rows as quartsess 0.1 wrote them: only the 0001 columns.
    await migrate(db_url, table_name, "upgrade", "head")
    clients = []
    async with app.test_app() as test_app:
        for n in range(3):
            client = test_app.test_client()
            await client.post("/set", json={"n": n, "user_id": f"u{n}"})
            clients.append(client)
    await migrate(db_url, table_name, "downgrade", "0001")
    assert len(await stored_rows_of(engine, table_name)) == 3  # downgrade keeps the rows
    await migrate(db_url, table_name, "upgrade", "head")
    app = add_routes(make_app(SESSION_PRUNE_INTERVAL=0))
    async with app.test_app():
        for n, client in enumerate(clients):
            client.app = app
            assert await (await client.get("/get/n")).get_json() == {"value": n}
        ext = app.extensions["quartsess"]
        assert await ext.user_sessions("u1", app) == []  # not bound until written
        clock.advance(60)  # the next touch binds the old row to its user
        assert (await clients[1].get("/get/n")).status_code == 200
        [listed] = await ext.user_sessions("u1", app)
        assert listed.handle


async def stored_rows_of(engine: AsyncEngine, table_name: str) -> list[Any]:
    async with engine.connect() as connection:
        return list(await connection.execute(text(f"SELECT id_hash FROM {table_name}")))  # noqa: S608


async def test_an_app_serves_from_the_migrated_table_without_creating_it(
    db_url: str, table_name: str, engine: AsyncEngine, make_app: AppFactory
) -> None:
    await migrate(db_url, table_name, "upgrade", "head")
    app = add_routes(make_app(SESSION_CREATE_TABLE=False, SESSION_PRUNE_INTERVAL=0))

    async with app.test_app() as test_app:
        assert (await test_app.test_client().get("/visits")).status_code == 200
        assert len(await stored_rows(app)) == 1


async def test_without_the_table_and_creation_off_session_requests_get_503(
    make_app: AppFactory, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Said once at start-up, in one line, with what creates the table; requests that
    need the session get 503 and their log line says "table missing", not "unavailable"."""
    app = add_routes(make_app(SESSION_CREATE_TABLE=False, SESSION_PRUNE_INTERVAL=0))

    with caplog.at_level(logging.INFO, logger="quartsess"):
        async with app.test_app() as test_app:
            [startup] = [r.getMessage() for r in caplog.records]
            assert startup.startswith(f"table missing: the sessions table {table_name!r}")
            assert "quart sessions migrate" in startup and "\n" not in startup
            caplog.clear()
            client = test_app.test_client()
            assert (await client.get("/static-page")).status_code == 200
            await client.post("/set", json={"n": 1})  # no cookie: stored? the table is missing
            response = await client.get("/visits", headers={"Cookie": "session=" + "A" * 43})
            assert response.status_code == 503
    messages = [r.getMessage() for r in caplog.records]
    assert messages and all("table missing" in m for m in messages), messages
    assert not [m for m in messages if "unavailable" in m]


async def test_the_alembic_command_upgrades_and_downgrades(tmp_path: Path, table_name: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite3'}"
    engine = create_async_engine(url)
    try:
        await alembic(*x_args(url, table_name), "upgrade", "head")
        assert (await describe(engine, table_name))["exists"]
        await alembic(*x_args(url, table_name), "downgrade", "base")
        assert not (await describe(engine, table_name))["exists"]
        assert not (await describe(engine, f"{table_name}_alembic_version"))["exists"]
    finally:
        await engine.dispose()


async def test_url_and_table_come_from_the_environment_like_the_app(
    tmp_path: Path,
) -> None:
    database = tmp_path / "from-env.sqlite3"
    env = {"QUARTSESS_DB_URL": f"sqlite+aiosqlite:///{database}", "QUARTSESS_TABLE": "envtab"}
    await alembic("upgrade", "head", env=env)
    engine = create_async_engine(env["QUARTSESS_DB_URL"])
    try:
        assert (await describe(engine, "envtab"))["exists"]
        assert await current_revision(engine, "envtab") == ["0003"]
    finally:
        await engine.dispose()


async def test_the_default_database_is_the_apps_sqlite_file_in_the_instance_folder(
    tmp_path: Path,
) -> None:
    env = {"QUARTSESS_INSTANCE_PATH": str(tmp_path / "instance")}
    for variable in ("QUARTSESS_DB_URL", "SESSION_DB_URL", "QUARTSESS_TABLE", "SESSION_TABLE"):
        env[variable] = ""
    await alembic("upgrade", "head", env=env)
    assert (tmp_path / "instance" / "quartsess.sqlite3").exists()


async def test_offline_mode_prints_the_sql(table_name: str) -> None:
    sql = await alembic(
        "-x",
        "url=postgresql+asyncpg://nobody@127.0.0.1/none",
        "-x",
        f"table={table_name}",
        "upgrade",
        "head",
        "--sql",
    )
    assert f"CREATE TABLE {table_name}" in sql
    assert f"CREATE INDEX ix_{table_name}_expires_at" in sql


@pytest.mark.parametrize(
    ("url", "write", "install"),
    [
        ("postgresql://nobody@127.0.0.1/none", "postgresql+asyncpg://", "quartsess[postgresql]"),
        ("postgresql+psycopg2://nobody@127.0.0.1/none", "postgresql+asyncpg://", "[postgresql]"),
        ("mysql+pymysql://root@127.0.0.1/none", "mysql+asyncmy://", "quartsess[mysql]"),
        ("mariadb://root@127.0.0.1/none", "mariadb+asyncmy://", "quartsess[mysql]"),
    ],
)
async def test_a_sync_driver_url_is_refused_naming_the_driver_to_write(
    url: str, write: str, install: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"),
        "-x", f"url={url}", "upgrade", "head",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await process.communicate())[0].decode()
    assert process.returncode != 0
    *_, last = output.strip().splitlines()
    assert last.startswith("quartsess's migrations run through an async driver"), output
    assert f"write {write}..." in last and install in last, last
    rest = last.replace(write, "")
    assert not [driver for driver in ("+asyncpg", "+asyncmy", "+aiosqlite") if driver in rest]
    assert "Traceback" not in output
