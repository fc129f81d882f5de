"""Several workers starting at the same moment, and the table they share."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, make_url

from quartsess.errors import TableMissing
from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore

WORKERS = 6


async def test_workers_creating_the_table_at_once_do_not_crash(
    db_url: str, table_name: str
) -> None:
    stores = [SqlStore.from_url(make_url(db_url), table_name, {}) for _ in range(WORKERS)]
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(store.prepare(create_table=True) for store in stores))
        row = StoredSession("ab" * 32, b"payload", 1, 1, 1, 2)
        await stores[0].insert(row)
        assert await stores[-1].load(row.id_hash) == row

        def indexes(connection: Connection) -> list[str]:
            found = inspect(connection).get_indexes(table_name)
            return [str(index["name"]) for index in found]

        assert sorted(await stores[0].run(indexes)) == [
            f"ix_{table_name}_expires_at",
            f"ix_{table_name}_user_hash",
            f"ux_{table_name}_handle",
        ]
    finally:
        for store in stores:
            await store.close()


async def test_table_creation_can_be_turned_off(db_url: str, table_name: str) -> None:
    store = SqlStore.from_url(make_url(db_url), table_name, {})
    try:
        with pytest.raises(TableMissing, match="quart sessions migrate"):
            await store.prepare(create_table=False)

        def exists(connection: Connection) -> bool:
            return inspect(connection).has_table(table_name)

        assert await store.run(exists) is False
    finally:
        await store.close()
