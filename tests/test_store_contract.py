"""The store contract (quartsess.stores.base), checked on every store: the in-memory
reference and the SQL store on SQLite, PostgreSQL and MariaDB, on its own connections and
on an app's own engine (``SqlStore.from_engine``)."""

from __future__ import annotations

import ast
import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from quartsess.stores.base import MaintainedStore, StoredSession
from quartsess.stores.memory import MemoryStore
from quartsess.stores.sql import SqlStore
from tests.support import helper_engine

PACKAGE = Path(__file__).resolve().parent.parent / "quartsess"


@pytest.fixture(params=["memory", "sql", "sql-app-engine"])
async def store(
    request: pytest.FixtureRequest, db_url: str, table_name: str
) -> AsyncIterator[MaintainedStore]:
    made: MaintainedStore
    app_engine = helper_engine(db_url) if request.param == "sql-app-engine" else None
    if request.param == "memory":
        made = MemoryStore(table_name)
    elif app_engine is not None:
        made = SqlStore.from_engine(app_engine, table_name)
    else:
        made = SqlStore(make_url(db_url), table_name, {})
    try:
        await made.prepare(create_table=True)
        yield made
    finally:
        await made.close()
        if app_engine is not None:
            await app_engine.dispose()


def row(id_hash: str, *, version: int = 1, expires_at: int = 100) -> StoredSession:
    return StoredSession(id_hash, b"ciphertext " + id_hash.encode(), version, 1, 1, expires_at)


H1, H2, H3 = ("1" * 64, "2" * 64, "3" * 64)


async def test_rows_round_trip_and_missing_rows_are_none(store: MaintainedStore) -> None:
    assert await store.load(H1) is None
    await store.insert(row(H1))
    assert await store.load(H1) == row(H1)


async def test_update_only_at_the_previous_version_and_never_recreates(
    store: MaintainedStore,
) -> None:
    await store.insert(row(H1))
    new = StoredSession(H1, b"y", 2, 1, 5, 9, handle="h1", user_hash="u" * 64, client=b"c")
    assert not await store.update(new, previous=replace(row(H1), version=2))
    assert await store.update(new, previous=row(H1))
    assert await store.load(H1) == replace(new, client=None)  # the client: listing only
    assert [r.client for r in await store.scan("", 1)] == [b"c"]
    await store.delete(H1)
    assert not await store.update(replace(new, version=3), previous=new)
    assert not await store.touch(H1, touched_at=6, expires_at=9, client=None)
    assert await store.load(H1) is None


@pytest.mark.parametrize("changes", ["payload", "times", "owner", "times and owner"])
async def test_an_update_writes_what_changed_and_keeps_a_touch_in_between(
    store: MaintainedStore, changes: str
) -> None:
    previous = replace(row(H1), handle="h1", user_hash="u" * 64, client=b"c0")
    await store.insert(previous)
    # Another request touches the row after this one loaded it (same version).
    assert await store.touch(H1, touched_at=40, expires_at=140, client=b"c1")
    new = replace(previous, payload=b"new", version=2, client=b"c2")
    if "times" in changes:
        new = replace(new, touched_at=50, expires_at=150)
    if "owner" in changes:
        new = replace(new, handle="h2", user_hash="v" * 64)
    assert await store.update(new, previous=previous)
    stored = await store.load(H1)
    assert stored is not None
    times = (50, 150) if "times" in changes else (40, 140)  # else the touch's
    owner = ("h2", "v" * 64) if "owner" in changes else ("h1", "u" * 64)
    assert (stored.payload, stored.version) == (b"new", 2)
    assert (stored.touched_at, stored.expires_at) == times
    assert (stored.handle, stored.user_hash) == owner
    assert [r.client for r in await store.scan("", 1)] == [b"c2"]


async def test_touch_ignores_the_version_and_keeps_the_payload(store: MaintainedStore) -> None:
    await store.insert(row(H1, version=7))
    assert await store.touch(H1, touched_at=50, expires_at=150, client=b"client")
    assert await store.load(H1) == StoredSession(H1, row(H1).payload, 7, 1, 50, 150)
    [scanned] = await store.scan("", 10)
    assert scanned.client == b"client"


async def test_a_users_rows_are_found_and_revoked_by_user_and_handle(
    store: MaintainedStore,
) -> None:
    ada, bob = "a" * 64, "b" * 64
    for id_hash, handle, user in ((H1, "h1", ada), (H2, "h2", ada), (H3, "h3", bob)):
        await store.insert(replace(row(id_hash), handle=handle, user_hash=user, client=b"c"))
    found = await store.sessions_of([ada, "x" * 64])
    assert sorted(r.handle or "" for r in found) == ["h1", "h2"]
    assert all(r.payload == row(r.id_hash).payload and r.client == b"c" for r in found)
    assert await store.delete_handles(["h3"], user_hashes=[ada]) == []  # not ada's
    [gone] = await store.delete_handles(["h3"])
    assert (gone.id_hash, gone.handle, gone.user_hash) == (H3, "h3", bob)
    assert (gone.payload, gone.client) == (row(H3).payload, None)  # the payload names the user
    assert [r.handle for r in await store.delete_user([ada], except_handle="h2")] == ["h1"]
    assert [r.handle for r in await store.sessions_of([ada])] == ["h2"]
    assert [r.handle for r in await store.delete_user([ada])] == ["h2"]
    assert await store.sessions_of([ada, bob]) == []
    assert await store.delete_handles([]) == []


async def test_each_deleted_row_is_returned_to_one_of_two_callers(store: MaintainedStore) -> None:
    # What lets a revocation be reported once, whichever process wins.
    ada = "a" * 64
    rows = [f"{n:064x}" for n in range(1, 41)]
    for n, id_hash in enumerate(rows):
        await store.insert(replace(row(id_hash), handle=f"h{n}", user_hash=ada))
    first, second = await asyncio.gather(store.delete_user([ada]), store.delete_user([ada]))
    assert sorted(r.id_hash for r in first + second) == rows


async def test_delete_version_deletes_only_that_version(store: MaintainedStore) -> None:
    await store.insert(row(H1, version=3))
    assert not await store.delete_version(H1, 2)
    assert await store.delete_version(H1, 3)
    assert not await store.delete_version(H1, 3)
    assert not await store.delete(H1)  # deleting a missing row is no error
    await store.insert(row(H1, version=3))
    assert await store.delete(H1)


async def test_delete_expired_deletes_due_rows_in_bounded_batches(
    store: MaintainedStore,
) -> None:
    for id_hash, expires in ((H1, 10), (H2, 20), (H3, 30)):
        await store.insert(row(id_hash, expires_at=expires))
    assert await store.delete_expired(20, limit=1) == 1
    assert await store.load(H1) is None
    assert await store.delete_expired(20, limit=10) == 1
    assert await store.delete_expired(20, limit=10) == 0
    assert await store.load(H3) is not None
    stats = await store.stats(now=30)
    assert (stats.rows, stats.expired_rows) == (1, 1)
    assert stats.payload_bytes == stats.largest_payload_bytes == len(row(H3).payload)


async def test_scan_walks_in_id_order_and_replace_payloads_checks_the_version(
    store: MaintainedStore,
) -> None:
    for id_hash in (H3, H1, H2):
        await store.insert(row(id_hash))
    first = await store.scan("", 2)
    assert [r.id_hash for r in first] == [H1, H2]
    assert [r.id_hash for r in await store.scan(first[-1].id_hash, 2)] == [H3]
    fresh = replace(row(H1), payload=b"new", user_hash="u" * 64)
    assert await store.replace_payloads([fresh, replace(row(H2), version=9)]) == 1
    assert (await store.load(H1)) == fresh
    assert (await store.load(H2)) == row(H2)


async def test_the_table_exists_after_prepare(store: MaintainedStore) -> None:
    await store.check_table()  # raises TableMissing otherwise
    assert store.backend in ("memory", "sqlite", "postgresql", "mysql")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_stores_know_no_quart_and_the_save_protocol_knows_no_driver() -> None:
    web = ("quart", "werkzeug", "flask")
    for path in (PACKAGE / "stores").glob("*.py"):
        assert not [n for n in _imports(path) if n.split(".")[0] in web], path.name
    saving = _imports(PACKAGE / "saving.py")
    assert not [n for n in saving if n.split(".")[0] in web]
    assert not [n for n in saving if "runner" in n or n.endswith(("sql", "memory"))], saving
    assert not [n for n in _imports(PACKAGE / "session.py") if "stores" in n]


async def test_engine_listeners_see_the_callers_context(db_url: str, table_name: str) -> None:
    """Maintenance on SQLite runs on a worker thread; a listener on the store's engine
    (tracing, say) still sees the context of the code that asked for the work."""
    store = SqlStore(make_url(db_url), table_name, {})
    request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("rid", default=None)
    seen: list[str | None] = []

    def listener(*_args: object) -> None:
        seen.append(request_id.get())

    event.listen(store.sync_engine, "before_cursor_execute", listener)
    try:
        request_id.set("request-1")
        await store.prepare(create_table=True)
        await store.stats(0)
        assert seen and set(seen) == {"request-1"}
    finally:
        event.remove(store.sync_engine, "before_cursor_execute", listener)
        await store.close()


async def test_a_shared_in_memory_sqlite_database_lives_until_the_store_closes() -> None:
    store = SqlStore(make_url("sqlite+aiosqlite:///file::memory:?cache=shared&uri=true"), "s", {})
    try:
        await store.prepare(create_table=True)
        await store.insert(row("a" * 64))
        assert (await store.load("a" * 64)) is not None
        assert (await store.stats(0)).rows == 1
    finally:
        await store.close()


async def test_closing_while_a_cancelled_callers_work_still_runs_leaves_the_loop_free(
    tmp_path: Path,
) -> None:
    """SQLite maintenance runs on a thread; a caller cancelled meanwhile leaves its work
    running there. Closing the store then waits for that work off the event loop."""
    store = SqlStore(make_url(f"sqlite+aiosqlite:///{tmp_path / 's.sqlite3'}"), "s", {})
    started, release = threading.Event(), threading.Event()
    # If close() blocked the loop, nothing below could set `release`: this bounds the test.
    watchdog = threading.Timer(10, release.set)
    watchdog.start()

    def slow_work(_connection: object) -> int:
        started.set()
        release.wait()
        return 1

    try:
        work = asyncio.ensure_future(store.run(slow_work))
        assert await asyncio.to_thread(started.wait, 10)
        work.cancel()
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0)  # one loop iteration: close() has started
        assert not closing.done()
        release.set()  # reached only if the loop is still free
        assert watchdog.is_alive()
        await closing
    finally:
        watchdog.cancel()
        release.set()


async def test_a_lease_is_taken_only_when_free_and_on_the_loaded_version(
    store: MaintainedStore,
) -> None:
    await store.insert(row(H1, version=3))
    assert not await store.take_lease(H1, version=2, owner="a", until=110, now=100)
    assert await store.take_lease(H1, version=3, owner="a", until=110, now=100)
    assert not await store.take_lease(H1, version=3, owner="b", until=115, now=105)  # held
    assert not await store.renew_lease(H1, owner="b", until=120)  # not b's
    assert await store.renew_lease(H1, owner="a", until=120)
    assert not await store.take_lease(H1, version=3, owner="b", until=125, now=115)
    assert await store.take_lease(H1, version=3, owner="b", until=130, now=120)  # ran out
    await store.release_lease(H1, owner="a")  # a lost it: nothing happens
    assert not await store.take_lease(H1, version=3, owner="c", until=130, now=121)
    await store.release_lease(H1, owner="b")
    assert await store.take_lease(H1, version=3, owner="c", until=130, now=121)
    # Writes leave the lease alone; deleting the row ends it.
    stored = await store.load(H1)
    assert stored is not None
    assert await store.update(replace(stored, payload=b"x", version=4), previous=stored)
    assert not await store.take_lease(H1, version=4, owner="d", until=140, now=122)
    assert await store.delete(H1)
    assert not await store.renew_lease(H1, owner="c", until=150)
    assert not await store.take_lease(H1, version=4, owner="d", until=140, now=200)
