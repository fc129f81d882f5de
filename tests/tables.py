"""Server tables of this test run: every name is generated here and recorded, so that the
run's end can check that none is left behind, without looking at the tables of the other
test runs that share the PostgreSQL and MariaDB databases."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from quartsess.config import DEFAULT_TABLE

#: Every table name this run generated (a test's own tables may add ``_suffixes``).
GENERATED: set[str] = set()


def unique_table(prefix: str = "qs_test") -> str:
    """A table name no other test or test run uses, recorded for the end-of-run check."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    GENERATED.add(name)
    return name


def made_by(name: str, table: str) -> bool:
    """Whether ``table`` is ``name`` or one derived from it (``<name>_alembic_version``)."""
    return table == name or table.startswith(f"{name}_")


def ours(tables: Iterable[str], generated: Iterable[str]) -> list[str]:
    """The ``tables`` whose names this run generated, sorted."""
    names = list(generated)
    return sorted(table for table in tables if any(made_by(name, table) for name in names))


def project_named(tables: Iterable[str]) -> list[str]:
    """The ``tables`` named like the library's default table (``quart_sessions*``)."""
    return sorted(table for table in tables if made_by(DEFAULT_TABLE, table))


async def table_names(url: str) -> set[str]:
    """The tables of the server database at ``url``."""
    engine = create_async_engine(url)

    def names(connection: Connection) -> set[str]:
        return set(inspect(connection).get_table_names())

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(names)
    finally:
        await engine.dispose()


async def drop_tables_of(url: str, name: str) -> None:
    """Drop ``name`` and the tables derived from it from a server database."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            found = await connection.run_sync(lambda c: inspect(c).get_table_names())
            for table in ours(found, [name]):
                await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    finally:
        await engine.dispose()
