"""MariaDB/MySQL: a session statement that InnoDB rolls back to break a deadlock (it picks
the smaller transaction, and a request's write is smaller than a prune batch) is run
again, instead of turning into a 503."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore
from quartsess.stores.sqlalchemy_runner import SqlAlchemyRunner
from quartsess.stores.statements import CompiledStatement
from tests.support import DEADLINE, bounded

# InnoDB locks rows in key order: FIRST, then SECOND, then the others (which the larger
# transaction deletes, one primary-key lookup each, so that it locks nothing else).
FIRST, SECOND = "a" * 64, "b" * 64
OTHERS = [f"c{n:063x}" for n in range(5)]


async def wait_until_a_transaction_waits_for_a_lock(
    connection: AsyncConnection, table: str
) -> None:
    """Poll InnoDB until a statement on ``table`` is blocked on a row lock (bounded). Its
    status report is built on every call; INNODB_TRX is a cache that polling keeps stale.
    Only a transaction of this table counts: the server is shared with other test runs."""
    give_up = time.monotonic() + DEADLINE
    status = text("SHOW ENGINE INNODB STATUS")

    def waiting(report: str) -> bool:
        return any(
            "LOCK WAIT" in block and table in block for block in report.split("---TRANSACTION")
        )

    while not waiting((await connection.execute(status)).one()[2]):
        if time.monotonic() > give_up:
            pytest.fail("the session statement never waited for the other transaction")


async def deadlock_a_statement(
    store: SqlStore, db_url: str, run: SqlAlchemyRunner
) -> asyncio.Future[int]:
    """Start a two-row session UPDATE through ``run`` and make InnoDB pick it as the
    victim of a deadlock with a larger transaction; returns the statement's future."""
    t = store.table
    for id_hash in (FIRST, SECOND, *OTHERS):
        await store.insert(StoredSession(id_hash, b"payload", 1, 1, 1, 10))
    statement = CompiledStatement(
        update(t).where(t.c.id_hash.in_([FIRST, SECOND])).values(version=t.c.version + 1),
        store.dialect,
    )
    other = create_async_engine(db_url)  # REPEATABLE READ transactions, like a pruner's
    try:
        async with other.connect() as larger, other.connect() as observer:
            name = t.name
            for id_hash in OTHERS:
                await larger.execute(text(f"DELETE FROM {name} WHERE id_hash = '{id_hash}'"))  # noqa: S608
            await larger.execute(text(f"UPDATE {name} SET version = 7 WHERE id_hash = '{SECOND}'"))  # noqa: S608
            victim = asyncio.ensure_future(run.rowcount(statement, {}))
            await wait_until_a_transaction_waits_for_a_lock(observer, name)  # it holds FIRST
            await larger.execute(text(f"UPDATE {name} SET version = 7 WHERE id_hash = '{FIRST}'"))  # noqa: S608
            await larger.commit()
    finally:
        await other.dispose()
    return victim


@pytest.mark.parametrize("backend", ["mariadb"])
async def test_a_statement_chosen_as_deadlock_victim_is_run_again(
    db_url: str, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqlStore.from_url(make_url(db_url), table_name, {})
    try:
        await store.prepare(create_table=True)
        with caplog.at_level(logging.INFO, logger="quartsess"):
            victim = await deadlock_a_statement(store, db_url, SqlAlchemyRunner(store.connections))
            assert await bounded(victim) == 2  # run again after the other one committed
        assert caplog.messages == ["a session write lost a deadlock in the database; retrying it"]
        first = await store.load(FIRST)
        assert first is not None and first.version == 8  # 7 from the other, then + 1
        assert all([await store.load(id_hash) is None for id_hash in OTHERS])
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["mariadb"])
async def test_the_deadlock_reaches_the_caller_without_the_retry(
    db_url: str, table_name: str
) -> None:
    """The scenario above really is a deadlock: run once, the statement fails."""

    class RunOnce(SqlAlchemyRunner):
        async def rowcount(self, statement: CompiledStatement, params: dict[str, object]) -> int:  # type: ignore[override]
            def work(connection: Connection) -> int:
                result = connection.execute(statement.statement, params)
                return int(result.rowcount)

            result: int = await self._run(work)
            return result

    store = SqlStore.from_url(make_url(db_url), table_name, {})
    try:
        await store.prepare(create_table=True)
        victim = await deadlock_a_statement(store, db_url, RunOnce(store.connections))
        with pytest.raises(DBAPIError, match="Deadlock"):
            await bounded(victim)
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["mariadb"])
async def test_a_prune_batch_chosen_as_deadlock_victim_is_run_again(
    db_url: str, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pruner's batch, rolled back whole by InnoDB (here: the driver's error for it,
    raised before the batch runs, as the victim's is), is run again rather than failing
    the pruning run."""
    store = SqlStore.from_url(make_url(db_url), table_name, {})
    try:
        await store.prepare(create_table=True)
        for id_hash in OTHERS:
            await store.insert(StoredSession(id_hash, b"payload", 1, 1, 1, 10))
        run = store.connections.run
        victims = 0

        async def first_one_deadlocks(work: object) -> object:
            nonlocal victims
            if victims == 0:
                victims += 1
                deadlock = Exception(1213, "Deadlock found when trying to get lock")
                raise DBAPIError("DELETE ...", {}, deadlock)
            return await run(work)  # type: ignore[arg-type]

        monkeypatch.setattr(store.connections, "run", first_one_deadlocks)
        assert await store.delete_expired(now=100, limit=100) == len(OTHERS)
        assert victims == 1
    finally:
        await store.close()
