"""quartsess behind PgBouncer in transaction pooling mode, with no setting of its own.

Each test starts a PgBouncer (Debian's package) on a free loopback port in front of the
test PostgreSQL, with a small server pool so that every client connection is served by
several server connections in turn, as in production. Required when CI=true.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from quartsess import Session
from quartsess.pruner import LOCK_NAME
from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore, hash_lock_key
from tests.conftest import IN_CI, SECRET, FakeClock, require_server
from tests.pgbouncer import PgBouncer, pgbouncer, unavailable
from tests.reliability import mixed_load
from tests.support import add_routes, drop_table, store_of

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def bouncer_or_skip() -> None:
    problem = unavailable()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PgBouncer is required when CI=true: {problem}")
        pytest.skip(problem)


@pytest.fixture
async def server_url(bouncer_or_skip: None) -> str:
    return await require_server("postgresql")


@pytest.fixture
def bouncer(server_url: str) -> Iterator[PgBouncer]:
    # Two server connections for a dozen client connections: every client's statements
    # land on whichever server connection is free.
    with pgbouncer(server_url, pool_size=2) as running:
        yield running


@pytest.fixture
async def table(server_url: str, table_name: str) -> AsyncIterator[str]:
    yield table_name
    await drop_table(server_url, table_name)


def make_app(url: str, table: str, clock: FakeClock | None = None, **config: Any) -> Quart:
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        SESSION_DB_URL=url,
        SESSION_TABLE=table,
        SESSION_PRUNE_INTERVAL=0,
        TESTING=True,
    )
    app.config.update(config)
    Session(app, clock=clock or FakeClock())
    return add_routes(app)


async def test_session_traffic_through_pgbouncer_has_no_errors(
    bouncer: PgBouncer, server_url: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(bouncer.url_for(server_url), table)
    async with app.test_app() as test_app:
        clients = [test_app.test_client() for _ in range(12)]
        first = clients[0]
        assert (await first.post("/set", json={"name": "ada", "lang": "en"})).status_code == 200
        assert await (await first.get("/get")).get_json() == {"name": "ada", "lang": "en"}
        assert (await first.post("/pop/lang")).status_code == 200
        assert await (await first.get("/get")).get_json() == {"name": "ada"}

        async def count_visits(client: Any, times: int) -> list[int]:
            seen = []
            for _ in range(times):
                response = await client.get("/visits")
                assert response.status_code == 200, await response.get_data(as_text=True)
                seen.append((await response.get_json())["visits"])
            return seen

        # Twelve users counting at once: a dozen asyncpg connections on two servers.
        counts = await asyncio.gather(*(count_visits(client, 15) for client in clients))
        assert counts[1:] == [list(range(1, 16))] * 11
        assert counts[0] == list(range(1, 16))

        # Concurrent writers on one session: different keys, both survive.
        responses = await asyncio.gather(
            *(first.post(f"/cart/{item}") for item in ("tea", "mug", "pot", "cup"))
        )
        assert [r.status_code for r in responses] == [200] * 4
        cart = (await (await first.get("/get")).get_json())["cart"]
        assert sum(cart.values()) >= 1  # last writer wins per request, never an error

        assert (await first.post("/login", json={"user": "ada"})).status_code == 200
        assert (await first.post("/clear")).status_code == 200
        assert await (await first.get("/get")).get_json() == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_workers_creating_the_table_at_once_through_pgbouncer(
    bouncer: PgBouncer, server_url: str, table: str
) -> None:
    url = make_url(bouncer.url_for(server_url))
    stores = [SqlStore.from_url(url, table, {}) for _ in range(4)]
    try:
        async with asyncio.timeout(30):  # a lock left on a pooled connection hangs here
            await asyncio.gather(*(store.prepare(create_table=True) for store in stores))
        for store in stores:
            await store.close()
        # And once more, as a restarted app would.
        again = SqlStore.from_url(url, table, {})
        stores.append(again)
        async with asyncio.timeout(30):
            await again.prepare(create_table=True)
    finally:
        for store in stores:
            await store.close()
    # A lock left on one of PgBouncer's server connections would outlive its user.
    assert not await advisory_lock_held(server_url, hash_lock_key(table))


async def test_pruning_and_its_lock_through_pgbouncer(
    bouncer: PgBouncer, server_url: str, table: str
) -> None:
    clock = FakeClock()
    url = bouncer.url_for(server_url)
    worker, other = make_app(url, table, clock), make_app(url, table, clock)
    now = int(clock())
    async with worker.test_app(), other.test_app():
        store = store_of(worker)
        for index in range(30):
            deadline = now - 1 if index < 25 else now + 60
            await store.insert(StoredSession(f"{index:064x}", b"ciphertext", 1, 0, 0, deadline))
        extension: Session = worker.extensions["quartsess"]
        pruner = extension.pruner_for(worker)
        pruner.batch_size = 4
        key = hash_lock_key(f"{LOCK_NAME}:{table}")
        async with store_of(other).try_lock(LOCK_NAME) as held:
            assert held
            # Held on the server for the whole block, whatever PgBouncer does between
            # statements: another worker cannot take it.
            for _ in range(5):
                assert await pruner.prune_unless_busy() is None
            assert await advisory_lock_held(server_url, key)
        assert not await advisory_lock_held(server_url, key)  # released, not leaked
        # Another client's work in between, then the prune: batches of 4, all through
        # the pooler, with the lock taken and released around them.
        assert (await worker.test_client().get("/visits")).status_code == 200
        other_extension: Session = other.extensions["quartsess"]
        deleted = await asyncio.gather(pruner.prune(), other_extension.prune(other))
        assert sum(deleted) == 25
        rows = await store.run(
            lambda c: c.execute(select(func.count()).select_from(store.table)).scalar_one()
        )
        assert rows == 6  # five live rows and the visitor's
        assert not await advisory_lock_held(server_url, key)


async def advisory_lock_held(server_url: str, key: int) -> bool:
    """Whether any server session holds the advisory lock ``key`` now."""
    engine = create_async_engine(server_url)
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid::bigint = :high AND objid::bigint = :low"
                ),
                {"high": high, "low": low},
            )
            return int(result.scalar_one()) > 0
    finally:
        await engine.dispose()


async def test_two_hypercorn_workers_under_load_through_pgbouncer(
    bouncer: PgBouncer, server_url: str, tmp_path: Path
) -> None:
    outcome = await mixed_load(
        tmp_path,
        bouncer.url_for(server_url),
        workers=2,
        clients=16,
        duration=6.0,
        name="pgbouncer",
    )
    report = outcome.report
    assert report.requests > 100
    assert report.server_errors == 0, report.statuses
    assert report.transport_errors == 0
    assert report.mismatches == []
    assert report.sessions_lost == 0
    assert outcome.problems == []


async def test_direct_connections_may_opt_into_asyncpg_named_statements(
    server_url: str, table: str
) -> None:
    options = {"connect_args": {"statement_cache_size": 100}}
    app = make_app(server_url, table, SESSION_ENGINE_OPTIONS=options)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for expected in range(1, 4):
            response = await client.get("/visits")
            assert (await response.get_json())["visits"] == expected
        assert (await client.post("/clear")).status_code == 200
        assert await (await client.get("/get")).get_json() == {}


async def test_the_apps_own_engine_through_pgbouncer(
    bouncer: PgBouncer, server_url: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``Session(app, engine=...)`` on an app's engine made for a pooler in transaction
    mode (unnamed statements, as its own queries need there): table creation, session
    traffic of a dozen clients, and pruning with its advisory lock, without an error."""
    engine = create_async_engine(
        bouncer.url_for(server_url),
        connect_args={"statement_cache_size": 0, "prepared_statement_cache_size": 0},
    )
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=SECRET, SESSION_TABLE=table, SESSION_PRUNE_INTERVAL=0, TESTING=True
    )
    clock = FakeClock()
    Session(app, engine=engine, clock=clock)
    add_routes(app)
    try:
        async with app.test_app() as test_app:
            clients = [test_app.test_client() for _ in range(12)]

            async def count_visits(client: Any) -> list[int]:
                seen = []
                for _ in range(10):
                    response = await client.get("/visits")
                    assert response.status_code == 200, await response.get_data(as_text=True)
                    seen.append((await response.get_json())["visits"])
                return seen

            counts = await asyncio.gather(*(count_visits(client) for client in clients))
            assert counts == [list(range(1, 11))] * 12
            clock.advance(60 * 60 * 24 * 40)  # every session past its idle deadline
            extension: Session = app.extensions["quartsess"]
            assert sum(await asyncio.gather(extension.prune(), extension.prune())) == 12
        key = hash_lock_key(f"{LOCK_NAME}:{table}")
        assert not await advisory_lock_held(server_url, key)
        async with engine.connect() as connection:  # still the app's, and working
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
