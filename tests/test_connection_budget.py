"""One PostgreSQL connection budget per worker: pool_size + max_overflow of
SESSION_ENGINE_OPTIONS is what the worker holds, requests and maintenance together; on
the app's own engine, that engine's pool is the worker's whole budget."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from quart import Quart
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quartsess import Session
from tests.conftest import SECRET, THROUGH_PGBOUNCER, AppFactory, FakeClock, require_server
from tests.support import add_routes, session_cookie


async def test_a_worker_stays_within_its_postgresql_budget(
    make_app: AppFactory, backend: str
) -> None:
    if backend != "postgresql":
        return  # the budget concerns the asyncpg pool beside SQLAlchemy's
    url = await require_server("postgresql")
    if THROUGH_PGBOUNCER:
        pytest.skip("through PgBouncer the server connections are PgBouncer's, not the worker's")
    name = f"qs_budget_{uuid.uuid4().hex[:8]}"
    app = add_routes(
        make_app(
            SESSION_ENGINE_OPTIONS={
                "pool_size": 3,
                "max_overflow": 0,
                "connect_args": {"server_settings": {"application_name": name}},
            }
        )
    )
    watcher = create_async_engine(url)
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        async with watcher.connect() as connection:
            for _ in range(2_000):  # bounded: the load below takes well under that
                count = await connection.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                    {"n": name},
                )
                seen.append(int(count or 0))
                if done.is_set():
                    return

    try:
        async with app.test_app() as test_app:
            clients = [test_app.test_client() for _ in range(12)]
            for client in clients:
                assert session_cookie(await client.post("/set", json={"n": 1}))
            watching = asyncio.ensure_future(watch())
            extension = app.extensions["quartsess"]
            for _ in range(5):
                await asyncio.gather(
                    extension.prune(),
                    *(client.get("/visits") for client in clients),
                    *(client.get("/get") for client in clients),
                )
            done.set()
            await asyncio.wait_for(watching, 60)
    finally:
        await watcher.dispose()
    assert seen and max(seen) <= 3, max(seen)
    assert max(seen) >= 1  # the watcher saw the worker's connections at all


async def test_on_the_apps_engine_the_worker_holds_only_that_engines_budget(
    backend: str, db_url: str, table_name: str, clock: FakeClock
) -> None:
    """``Session(app, engine=...)``: requests, pruning and the app's own queries share
    the app's pool of 3, and nothing else connects (no asyncpg pool of quartsess's own)."""
    if backend != "postgresql":
        return
    if THROUGH_PGBOUNCER:
        pytest.skip("through PgBouncer the server connections are PgBouncer's, not the worker's")
    name = f"qs_budget_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(
        db_url,
        pool_size=3,
        max_overflow=0,
        connect_args={"server_settings": {"application_name": name}},
    )
    app = add_routes(Quart(__name__))
    app.config.update(SECRET_KEY=SECRET, SESSION_TABLE=table_name, TESTING=True)
    Session(app, engine=engine, clock=clock)

    @app.get("/own-query")
    async def own_query() -> str:  # the app's own work on its engine, beside the sessions
        async with engine.connect() as connection:
            await connection.execute(text("SELECT pg_sleep(0.01)"))
        return "ok"

    watcher = create_async_engine(db_url)
    seen: list[int] = []
    try:
        async with app.test_app() as test_app:
            clients = [test_app.test_client() for _ in range(12)]
            for client in clients:
                assert session_cookie(await client.post("/set", json={"n": 1}))
            extension = app.extensions["quartsess"]
            for _ in range(5):
                responses = await asyncio.gather(
                    *(client.get("/visits") for client in clients),
                    *(client.get("/own-query") for client in clients),
                )
                await extension.prune()
                assert {r.status_code for r in responses} == {200}
                seen.append(await connection_count(watcher, name))
    finally:
        await watcher.dispose()
        await engine.dispose()
    assert max(seen) <= 3, seen
    assert min(seen) >= 1  # the app's pool keeps its connections between requests


async def connection_count(watcher: AsyncEngine, name: str) -> int:
    async with watcher.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
            {"n": name},
        )
    return int(count or 0)
