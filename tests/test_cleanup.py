"""The suite leaves nothing on the database servers: a test run whose tests leave one of its
own tables fails, and tables of parallel runs are neither blamed nor touched."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import require_server
from tests.tables import drop_tables_of, table_names, unique_table

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 120

LEAKY_TEST = """
import asyncio, os
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from tests import conftest, tables


def test_leaves_its_table_and_sees_another_runs_table_appear():
    name = os.environ["LEAK_TABLE"]
    tables.GENERATED.add(name)  # as unique_table() does

    async def create():
        url = await conftest.require_server(os.environ["LEAK_BACKEND"])
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            for table in (name, os.environ["OTHER_TABLE"]):
                await connection.execute(text(f"CREATE TABLE {table} (x INTEGER)"))
        await engine.dispose()

    asyncio.run(create())
"""


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_a_table_left_by_a_test_fails_the_run_and_other_runs_tables_are_left_alone(
    tmp_path: Path, backend: str
) -> None:
    url = await require_server(backend)
    leaked = unique_table("qs_leak")
    # Named like the library's default table, made by "someone else" during the run.
    other = f"quart_sessions_other_{uuid.uuid4().hex[:12]}"
    ini = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    (tmp_path / "pytest.ini").write_text(ini)
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST)
    env = {**os.environ, "LEAK_BACKEND": backend, "LEAK_TABLE": leaked, "OTHER_TABLE": other}
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
            "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
            str(tmp_path / "test_leaky.py"),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        async with asyncio.timeout(RUN_TIMEOUT):
            output = (await process.communicate())[0].decode()
        assert process.returncode == 1, output
        assert "1 passed" in output, output
        blamed, unsure = output.split("server tables left behind", 1)[1].split(
            "new tables named like quart_sessions", 1
        )
        assert f"{backend}: {leaked}" in blamed
        assert other not in blamed
        assert f"{backend}: {other}" in unsure
        assert {leaked, other} <= await table_names(url)  # the guard dropped nothing
    finally:
        await drop_tables_of(url, leaked)
        await drop_tables_of(url, other)
    assert not {leaked, other} & await table_names(url)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_a_tests_cleanup_drops_its_table_and_the_tables_derived_from_it_only(
    backend: str,
) -> None:
    """What the db_url fixture runs after each test: ``<table>_alembic_version`` (or a table
    renamed to ``<table>_away`` by a test that failed half-way) goes too; a neighbour whose
    name merely starts alike stays."""
    url = await require_server(backend)
    name = unique_table()
    derived = [name, f"{name}_alembic_version", f"{name}_away"]
    neighbour = f"{name}x"  # another name, not derived from this one
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for table in [*derived, neighbour]:
                await connection.execute(text(f"CREATE TABLE {table} (x INTEGER)"))
        await drop_tables_of(url, name)
        left = await table_names(url)
        assert not set(derived) & left
        assert neighbour in left
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {neighbour}"))
        await engine.dispose()
