"""The per-request fast paths: quartsess's own asyncpg pool, and saves that skip the task."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, column, func, literal_column, select, table, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from quartsess.errors import StoreError
from quartsess.interface import ServerSessionInterface
from quartsess.stores import sqlite_runner
from quartsess.stores.asyncpg_runner import AsyncpgRunner, asyncpg_connect_kwargs
from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore
from quartsess.stores.sqlite_runner import SqliteRunner
from quartsess.stores.statements import CompiledStatement
from tests import tables
from tests.conftest import AppFactory, require_server
from tests.support import add_routes


@pytest.fixture
async def runner_and_sleep() -> AsyncIterator[tuple[AsyncpgRunner, CompiledStatement]]:
    url = await require_server("postgresql")
    engine = create_async_engine(url)
    # SELECT pg_sleep(:s), compiled like the store's statements.
    statement = CompiledStatement(select(func.pg_sleep(bindparam("s"))), engine.dialect)
    _, url_kwargs = engine.dialect.create_connect_args(engine.url)
    connect = asyncpg_connect_kwargs(url_kwargs, {"timeout": 2, "command_timeout": 30})
    runner = AsyncpgRunner(connect, max_size=2)
    try:
        yield runner, statement
    finally:
        await runner.close()
        await engine.dispose()


async def test_more_requests_than_connections_all_get_served(
    runner_and_sleep: tuple[AsyncpgRunner, CompiledStatement],
) -> None:
    runner, sleep = runner_and_sleep
    results = await asyncio.gather(*(runner.fetch_one(sleep, {"s": 0.02}) for _ in range(12)))
    assert len(results) == 12
    assert runner._slots == 2
    assert len(runner._idle) == 2
    assert not [w for w in runner._waiters if not w.done()]


async def test_waiting_longer_than_the_acquire_timeout_is_a_store_error(
    runner_and_sleep: tuple[AsyncpgRunner, CompiledStatement],
) -> None:
    runner, sleep = runner_and_sleep
    runner._acquire_timeout = 0.2
    busy = [asyncio.ensure_future(runner.fetch_one(sleep, {"s": 1.0})) for _ in range(2)]
    await asyncio.sleep(0.1)
    with pytest.raises(StoreError, match="no connection free"):
        await runner.fetch_one(sleep, {"s": 0})
    await asyncio.gather(*busy)
    # The pool still works and has not grown past its size.
    await runner.fetch_one(sleep, {"s": 0})
    assert runner._slots <= 2


async def test_a_statement_cancelled_mid_flight_drops_its_connection_and_frees_the_slot(
    runner_and_sleep: tuple[AsyncpgRunner, CompiledStatement],
) -> None:
    runner, sleep = runner_and_sleep
    await runner.fetch_one(sleep, {"s": 0})
    first = next(iter(runner._members))
    task = asyncio.ensure_future(runner.fetch_one(sleep, {"s": 5}))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert first.is_closed()
    assert first not in runner._members
    assert runner._slots == 0
    # A waiter queued behind a full pool gets the freed slot.
    await asyncio.gather(*(runner.fetch_one(sleep, {"s": 0.01}) for _ in range(5)))
    assert runner._slots <= 2


async def test_a_refused_statement_keeps_the_connection(
    runner_and_sleep: tuple[AsyncpgRunner, CompiledStatement],
) -> None:
    runner, sleep = runner_and_sleep
    await runner.fetch_one(sleep, {"s": 0})
    engine = create_async_engine(await require_server("postgresql"))
    try:
        bad = CompiledStatement(
            select(literal_column("1")).select_from(table("qs_no_such_table", column("x"))),
            engine.dialect,
        )
    finally:
        await engine.dispose()
    with pytest.raises(StoreError, match="UndefinedTable"):
        await runner.fetch_one(bad, {})
    assert len(runner._members) == 1
    assert runner._idle and not runner._idle[0].is_closed()


async def test_a_read_only_request_starts_no_save(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    interface = app.session_interface
    assert isinstance(interface, ServerSessionInterface)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"name": "ada", "cart": {"tea": 1}})
        saves = 0
        original = interface.saver.carry_out

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal saves
            saves += 1
            return await original(*args, **kwargs)

        interface.saver.carry_out = counting  # type: ignore[method-assign]
        response = await client.get("/get/name")
        assert response.status_code == 200
        assert response.headers["Vary"] == "Cookie"
        assert saves == 0  # decided without a task: nothing to write
        await client.get("/visits")
        assert saves == 1


async def test_sqlite_checkpoints_run_on_the_thread_not_in_a_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints: list[tuple[str, tuple[int, int, int]]] = []

    def recording_checkpoint(connection: sqlite3.Connection) -> None:
        result = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        checkpoints.append((threading.current_thread().name, result))

    monkeypatch.setattr(sqlite_runner, "_checkpoint", recording_checkpoint)
    path = tmp_path / "wal.sqlite3"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    setup.close()
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    t = table("t", column("k"), column("v"))
    insert_row = CompiledStatement(
        t.insert().values(k=bindparam("k"), v=bindparam("v")), engine.dialect
    )
    runner = SqliteRunner(str(path), busy_timeout_ms=1000)
    try:
        for k in range(SqliteRunner.CHECKPOINT_EVERY - 1):
            await runner.rowcount(insert_row, {"k": k, "v": b"x" * 3000})
        inline, thread = await runner._connections()
        assert inline.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        assert runner._checkpoint_ended is None
        await runner.rowcount(insert_row, {"k": -1, "v": b"x"})
        assert runner._checkpoint_ended is not None  # started, on the thread
        await asyncio.get_running_loop().run_in_executor(thread, lambda: None)  # queued after it
        assert runner._checkpoint_ended is None
        [(thread_name, (busy, logged, copied))] = checkpoints
        assert thread_name.startswith("quartsess-sqlite")
        assert busy == 0 and logged == copied > 0  # every frame copied into the file
    finally:
        await runner.close()
        await engine.dispose()


def _wal_table(tmp_path: Path) -> tuple[Path, CompiledStatement]:
    path = tmp_path / "wal.sqlite3"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    setup.close()
    t = table("t", column("k"), column("v"))
    dialect = make_url("sqlite://").get_dialect()()
    return path, CompiledStatement(t.insert().values(k=bindparam("k"), v=bindparam("v")), dialect)


@pytest.mark.parametrize("ending", ["checkpoint ends", "runner closes"])
async def test_a_write_waits_for_the_checkpoint_that_lets_the_log_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    # The first checkpoint reports the log past its limit; the next one hangs (a large
    # backlog, a slow disk). A write waits for it to end, on the loop, and goes on at
    # once when the runner starts closing (close() itself waits for the thread).
    release = threading.Event()
    hanging = asyncio.Event()
    loop = asyncio.get_running_loop()
    calls = 0

    def checkpoint(connection: sqlite3.Connection) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            loop.call_soon_threadsafe(hanging.set)
            release.wait(30)
        return sqlite_runner._LOG_LIMIT_FRAMES + 1

    monkeypatch.setattr(sqlite_runner, "_checkpoint", checkpoint)
    path, insert_row = _wal_table(tmp_path)
    runner = SqliteRunner(str(path), busy_timeout_ms=1000)
    closing: asyncio.Future[None] | None = None
    try:
        for k in range(SqliteRunner.CHECKPOINT_EVERY):
            await runner.rowcount(insert_row, {"k": k, "v": b"x"})
        _, thread = await runner._connections()
        await asyncio.get_running_loop().run_in_executor(thread, lambda: None)  # after it
        assert runner._log_too_long
        async with asyncio.timeout(10):
            write = asyncio.ensure_future(runner.rowcount(insert_row, {"k": -1, "v": b"x"}))
            await hanging.wait()
            for _ in range(10):
                await asyncio.sleep(0)
            assert not write.done()  # waiting for the checkpoint
            if ending == "checkpoint ends":
                release.set()
            else:
                closing = asyncio.ensure_future(runner.close())
            assert await write == 1
            assert release.is_set() == (ending == "checkpoint ends")
    finally:
        release.set()
        if closing is not None:
            await closing
        await runner.close()
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (
            SqliteRunner.CHECKPOINT_EVERY + 1,
        )
    finally:
        check.close()


async def test_closing_the_pool_fails_waiting_requests_at_once_and_keeps_no_connection(
    runner_and_sleep: tuple[AsyncpgRunner, CompiledStatement],
) -> None:
    runner, sleep = runner_and_sleep
    busy = [asyncio.ensure_future(runner.fetch_one(sleep, {"s": 0.3})) for _ in range(2)]
    waiting = asyncio.ensure_future(runner.fetch_one(sleep, {"s": 0}))
    async with asyncio.timeout(10):
        for _ in range(1000):  # bounded: until both connections are busy and one waits
            # Both open, not only their slots taken: one still connecting would fail too.
            if runner._waiters and len(runner._members) == 2:
                break
            await asyncio.sleep(0.01)
        assert runner._waiters
        assert len(runner._members) == 2
        await runner.close()
        with pytest.raises(StoreError, match="closed"):
            await waiting  # at once, not after the 2 s acquire time-out
        await asyncio.gather(*busy)  # statements in flight finish; their connections close
    assert (runner._slots, runner._idle, runner._members) == (0, [], {})


async def test_a_connection_opened_while_the_pool_closes_is_not_kept(
    runner_and_sleep: tuple[AsyncpgRunner, CompiledStatement],
) -> None:
    runner, sleep = runner_and_sleep
    connecting = asyncio.ensure_future(runner.fetch_one(sleep, {"s": 0}))
    await asyncio.sleep(0)  # the request has taken a slot and started connecting
    await runner.close()
    with pytest.raises(StoreError, match="closed"):
        await asyncio.wait_for(connecting, 10)
    assert (runner._slots, runner._idle, runner._members) == (0, [], {})
    assert await runner.fetch_one(sleep, {"s": 0}) == (None,)  # usable again afterwards


async def test_on_postgresql_a_touch_commits_without_the_flush_and_content_writes_with_it(
    table_name: str,
) -> None:
    """A trigger records the ``synchronous_commit`` each write of the sessions table ran
    with: off for a touch only (it moves an idle deadline), on for inserts and content
    updates, and the touch's setting does not stay on the connection."""
    url = await require_server("postgresql")
    store = SqlStore(make_url(url), table_name, {})
    await store.prepare(create_table=True)
    log = f"{table_name}_commits"

    def setup(connection: Connection) -> None:
        connection.execute(text(f"CREATE TABLE {log} (op text, mode text)"))
        connection.execute(
            text(
                f"CREATE FUNCTION {log}_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "  # noqa: S608
                f"INSERT INTO {log} VALUES (TG_OP || ':' || "
                "CASE WHEN NEW.version IS DISTINCT FROM OLD.version THEN 'content' "
                "ELSE 'touch' END, current_setting('synchronous_commit')); RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                f"CREATE TRIGGER {log}_t AFTER INSERT OR UPDATE ON {table_name} "
                f"FOR EACH ROW EXECUTE FUNCTION {log}_f()"
            )
        )

    def recorded(connection: Connection) -> list[tuple[str, str]]:
        rows = connection.execute(text(f"SELECT op, mode FROM {log}"))  # noqa: S608
        return [(op, mode) for op, mode in rows]

    def teardown(connection: Connection) -> None:
        connection.execute(text(f"DROP TABLE IF EXISTS {log}"))
        connection.execute(text(f"DROP FUNCTION IF EXISTS {log}_f() CASCADE"))

    try:
        await store.run(setup)
        row = StoredSession("h" * 64, b"sealed", 1, 1, 1, 100, handle="x")
        await store.insert(row)
        assert await store.touch(row.id_hash, touched_at=2, expires_at=200, client=None)
        assert await store.update(replace(row, version=2, touched_at=3), previous=row)
        assert await store.run(recorded) == [
            ("INSERT:content", "on"),
            ("UPDATE:touch", "off"),
            ("UPDATE:content", "on"),
        ]
        assert (await store.load(row.id_hash)) is not None
    finally:
        await store.run(teardown)
        await store.close()
        await tables.drop_tables_of(url, table_name)
