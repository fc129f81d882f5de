"""The background pruner and ``Session.prune()``, on every backend, with real rows."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from quart import Quart, session
from sqlalchemy import MetaData, func, select, text
from sqlalchemy.engine import Connection, make_url

from quartsess import Session
from quartsess.codec import PayloadCodec
from quartsess.keys import derive_fernet_key
from quartsess.lifecycle import Lifecycle
from quartsess.pruner import LOCK_NAME, Pruner
from quartsess.schema import build_table
from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore
from tests.conftest import AppFactory, FakeClock
from tests.support import StatementLog, execute, store_of, stored_rows

NO_BACKGROUND = {"SESSION_PRUNE_INTERVAL": 0}
HOUR = 3600.0


def extension(app: Quart) -> Session:
    ext: Session = app.extensions["quartsess"]
    return ext


async def add_rows(app: Quart, expires: list[int], prefix: str = "a") -> None:
    store = store_of(app)
    for index, deadline in enumerate(expires):
        id_hash = f"{prefix}{index:063x}"[:64]
        await store.insert(StoredSession(id_hash, b"ciphertext", 1, 0, 0, deadline))


async def row_count(app: Quart) -> int:
    store = store_of(app)
    query = select(func.count()).select_from(store.table)

    def work(connection: Connection) -> int:
        return int(connection.execute(query).scalar_one())

    return await store.run(work)


async def test_prune_deletes_exactly_the_expired_rows(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app(**NO_BACKGROUND)
    now = int(clock())
    async with app.test_app():
        await add_rows(app, [now - 100, now - 1, now, now + 1, now + 100])
        assert await extension(app).prune() == 3  # expires_at <= now is expired
        assert sorted(row.expires_at for row in await stored_rows(app)) == [now + 1, now + 100]
        assert await extension(app).prune() == 0


async def test_prune_removes_sessions_made_by_requests_once_idle(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app(SESSION_IDLE_TIMEOUT=600, **NO_BACKGROUND)

    @app.get("/login/<name>")
    async def login(name: str) -> str:
        session["user"] = name
        return "ok"

    @app.get("/whoami")
    async def whoami() -> str:
        return str(session.get("user"))

    async with app.test_app() as test_app:
        early, late = test_app.test_client(), test_app.test_client()
        await early.get("/login/early")
        clock.advance(300)
        await late.get("/login/late")
        clock.advance(301)  # early is 601 s idle, late 301 s
        assert await extension(app).prune() == 1
        assert len(await stored_rows(app)) == 1
        assert await (await late.get("/whoami")).get_data(as_text=True) == "late"
        assert await (await early.get("/whoami")).get_data(as_text=True) == "None"


async def test_prune_works_in_bounded_batches(make_app: AppFactory, clock: FakeClock) -> None:
    app = make_app(**NO_BACKGROUND)
    now = int(clock())
    async with app.test_app():
        await add_rows(app, [now - 10] * 25 + [now + 10] * 2)
        extension(app).pruner_for(app).batch_size = 10
        with StatementLog(app) as log:
            assert await extension(app).prune() == 25
        assert log.count("DELETE") == 3  # 10 + 10 + 5
        assert await row_count(app) == 2


async def test_requests_are_served_between_batches(make_app: AppFactory, clock: FakeClock) -> None:
    """The pruner holds no connection (on SQLite: not the shared one) between batches."""
    app = make_app(**NO_BACKGROUND)

    @app.get("/visit")
    async def visit() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    now = int(clock())
    async with app.test_app() as test_app:
        await add_rows(app, [now - 10] * 6)
        pruner = extension(app).pruner_for(app)
        pruner.batch_size = 2
        store = pruner.store
        first_batch_done, resume = asyncio.Event(), asyncio.Event()
        real_delete = store.delete_expired

        async def paused_after_first_batch(now: int, limit: int) -> int:
            deleted = await real_delete(now, limit)
            if not first_batch_done.is_set():
                first_batch_done.set()
                await resume.wait()
            return deleted

        store.delete_expired = paused_after_first_batch  # type: ignore[method-assign]
        prune = asyncio.create_task(extension(app).prune())
        await first_batch_done.wait()
        client = test_app.test_client()
        assert await (await client.get("/visit")).get_data(as_text=True) == "1"
        assert not prune.done()
        resume.set()
        assert await prune == 6
        assert await row_count(app) == 1  # the visitor's session


async def test_background_pruner_runs_while_serving_and_stops_after(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app(SESSION_PRUNE_INTERVAL=HOUR)
    pruner = extension(app).pruner_for(app)
    assert not pruner.running
    now = int(clock())
    async with app.test_app():
        assert pruner.running
        await add_rows(app, [now - 5] * 3 + [now + 5])
        pruner.wake()
        assert await pruner.next_run() == 3
        clock.advance(10)
        pruner.wake()
        assert await pruner.next_run() == 1
        assert pruner.runs == 2
    assert not pruner.running
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "quartsess-pruner"]


async def test_interval_zero_turns_the_background_task_off(make_app: AppFactory) -> None:
    app = make_app(SESSION_PRUNE_INTERVAL=0)
    async with app.test_app():
        assert not extension(app).pruner_for(app).running
        assert await extension(app).prune() == 0  # on demand still works


async def test_every_app_gets_its_own_pruner(make_app: AppFactory) -> None:
    first, second = make_app(SESSION_PRUNE_INTERVAL=HOUR), make_app(SESSION_PRUNE_INTERVAL=HOUR)
    async with first.test_app(), second.test_app():
        assert extension(first).pruner_for(first).running
        assert extension(second).pruner_for(second).running
        assert extension(first).pruner_for(first) is not extension(second).pruner_for(second)


async def test_background_delays_are_jittered_around_the_interval(
    make_app: AppFactory,
) -> None:
    app = make_app(SESSION_PRUNE_INTERVAL=HOUR)
    pruner = extension(app).pruner_for(app)
    calls: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        calls.append((low, high))
        return high

    pruner._uniform = uniform
    async with app.test_app():
        pruner.wake()
        await pruner.next_run()
    # The first run falls anywhere in the first interval, later ones at interval +/- 20 %.
    assert calls == [(0.0, 1.0), (0.8, 1.2)]


async def test_a_database_error_is_logged_and_the_next_run_succeeds(
    make_app: AppFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(SESSION_PRUNE_INTERVAL=HOUR)
    now = int(clock())
    pruner = extension(app).pruner_for(app)
    async with app.test_app():
        store = store_of(app)
        await execute(app, text(f"DROP TABLE {store.table.name}"))
        with caplog.at_level(logging.ERROR, logger="quartsess"):
            pruner.wake()
            assert await pruner.next_run() is None
        assert "pruning expired sessions failed" in caplog.text
        assert pruner.running
        await store.run(store._create_missing)
        await add_rows(app, [now - 1, now - 1])
        pruner.wake()
        assert await pruner.next_run() == 2


def stopping_of(pruner: Pruner) -> asyncio.Event:
    """An event set as soon as the app starts stopping ``pruner``."""
    stopping = asyncio.Event()
    real_stop = pruner.stop

    async def signalling_stop() -> None:
        stopping.set()
        await real_stop()

    pruner.stop = signalling_stop  # type: ignore[method-assign]
    return stopping


async def test_stopping_during_a_batch_finishes_it_and_leaves_the_database_usable(
    make_app: AppFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(SESSION_PRUNE_INTERVAL=HOUR)
    now = int(clock())
    pruner = extension(app).pruner_for(app)
    entered, stopping = asyncio.Event(), stopping_of(pruner)
    async with app.test_app():
        await add_rows(app, [now - 1] * 50)
        pruner.batch_size = 1
        real_delete = pruner.store.delete_expired

        async def signalling_delete(now: int, limit: int) -> int:
            entered.set()
            # The first batch's DELETE starts only once the app is stopping the pruner,
            # so it is in flight when the stop arrives, however fast the database is.
            await stopping.wait()
            return await real_delete(now, limit)

        pruner.store.delete_expired = signalling_delete  # type: ignore[method-assign]
        pruner.wake()
        await entered.wait()
        # Leaving test_app() shuts down while a DELETE is in flight.
    assert not pruner.running
    gc.collect()  # a future torn down mid-query would complain now
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    again = make_app(**NO_BACKGROUND)
    async with again.test_app():
        remaining = await row_count(again)
        assert remaining == 49  # the batch in flight finished; no further batch started
        assert await extension(again).prune() == remaining
        async with store_of(again).try_lock(LOCK_NAME) as acquired:
            assert acquired  # no lock left behind by the cancelled run


async def test_a_batch_that_fails_while_stopping_is_logged(
    make_app: AppFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch in flight when the app stops fails (the database went at that moment):
    said once, not dropped."""
    from quartsess import SessionStoreUnavailable

    app = make_app(SESSION_PRUNE_INTERVAL=HOUR)
    now = int(clock())
    pruner = extension(app).pruner_for(app)
    entered, stopping = asyncio.Event(), stopping_of(pruner)
    async with app.test_app():
        await add_rows(app, [now - 1] * 5)

        async def failing_delete(now: int, limit: int) -> int:
            entered.set()
            await stopping.wait()
            raise SessionStoreUnavailable("the database went away")

        pruner.store.delete_expired = failing_delete  # type: ignore[method-assign]
        pruner.wake()
        await entered.wait()
    assert not pruner.running
    failures = [r for r in caplog.records if "failed while stopping" in r.getMessage()]
    assert len(failures) == 1 and "the database went away" in failures[0].getMessage()


async def test_concurrent_pruners_delete_each_row_once(
    make_app: AppFactory, clock: FakeClock
) -> None:
    """Two workers on one table: no deadlock, no error, every expired row deleted once."""
    first, second = make_app(**NO_BACKGROUND), make_app(**NO_BACKGROUND)
    now = int(clock())
    async with first.test_app(), second.test_app():
        await add_rows(first, [now - 1] * 120 + [now + 60] * 3)
        for app in (first, second):
            extension(app).pruner_for(app).batch_size = 7
        counts = await asyncio.gather(
            extension(first).prune(first),
            extension(second).prune(second),
            extension(first).prune(first),
        )
        assert sum(counts) == 120
        assert await row_count(first) == 3


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)  # their locks
async def test_server_databases_let_one_worker_prune_at_a_time(
    make_app: AppFactory, clock: FakeClock
) -> None:
    worker, other = make_app(SESSION_PRUNE_INTERVAL=HOUR), make_app(**NO_BACKGROUND)
    now = int(clock())
    pruner = extension(worker).pruner_for(worker)
    async with worker.test_app(), other.test_app():
        await add_rows(worker, [now - 1] * 4)
        async with store_of(other).try_lock(LOCK_NAME) as held:
            assert held
            pruner.wake()
            assert await pruner.next_run() is None  # skipped: someone else prunes
            assert await pruner.prune_unless_busy() is None
            assert await row_count(worker) == 4
        pruner.wake()
        assert await pruner.next_run() == 4
        async with store_of(other).try_lock(LOCK_NAME) as held:
            assert held  # released after the run


async def test_the_prune_lock_is_per_table_and_a_no_op_elsewhere(
    backend: str, db_url: str, table_name: str
) -> None:
    store = SqlStore.from_url(make_url(db_url), table_name, {})
    neighbour = SqlStore.from_url(make_url(db_url), f"{table_name}_b", {})
    try:
        async with store.try_lock(LOCK_NAME) as first:
            async with store.try_lock(LOCK_NAME) as second, neighbour.try_lock(LOCK_NAME) as third:
                assert first and third
                assert second is (backend == "sqlite")  # SQLite has no lock to take
    finally:
        await store.close()
        await neighbour.close()


async def test_pruner_uses_the_injected_clock(db_url: str, table_name: str) -> None:
    store = SqlStore.from_url(make_url(db_url), table_name, {})
    clock = FakeClock(1000)
    try:
        await store.prepare(create_table=True)
        await store.insert(StoredSession("b" * 64, b"x", 1, 0, 0, 1500))
        codec = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 16)
        pruner = Pruner(Lifecycle(store, codec, None), clock=clock, interval=0)
        assert await pruner.prune() == 0
        clock.advance(500)
        assert await pruner.prune() == 1
    finally:
        await store.run(lambda sync: build_table(MetaData(), table_name).drop(sync))
        await store.close()
