"""One PostgreSQL connection budget per worker: pool_size + max_overflow of
SESSION_ENGINE_OPTIONS is what the worker holds, requests and maintenance together."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import THROUGH_PGBOUNCER, AppFactory, require_server
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
