"""The maintenance connections on PostgreSQL and MariaDB: SQLAlchemy's ordinary engine on
the asyncio driver, driven through its greenlet bridge (``stores/connections.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncmy  # type: ignore[import-untyped]
import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.util import await_only

from quartsess.stores.connections import ServerConnections
from tests.conftest import require_server
from tests.support import bounded

SERVERS = ["postgresql", "mariadb"]


def _select_one(connection: Connection) -> int:
    return int(connection.execute(text("SELECT 1")).scalar_one())


@pytest.mark.parametrize("backend", SERVERS)
async def test_an_async_creator_in_the_engine_options_makes_the_connections(
    backend: str,
) -> None:
    """``SESSION_ENGINE_OPTIONS = {"async_creator": ...}`` works as with
    ``create_async_engine``: the app's coroutine function opens every connection."""
    url = make_url(await require_server(backend))
    made: list[str] = []

    async def connect() -> Any:
        made.append(backend)
        if backend == "postgresql":
            return await asyncpg.connect(
                host=url.host, port=url.port, user=url.username, database=url.database
            )
        return await asyncmy.connect(
            host=url.host, port=url.port or 3306, user=url.username, database=url.database
        )

    connections = ServerConnections(url, {"async_creator": connect})
    try:
        assert await connections.run(_select_one) == 1
    finally:
        await connections.close()
    assert made == [backend]


@pytest.mark.parametrize("backend", SERVERS)
async def test_a_cancellation_during_the_return_to_the_pool_keeps_the_connection(
    backend: str,
) -> None:
    """A client that goes away cancels its request, maybe while the connection is being
    handed back (a rollback round trip): the hand-back finishes, the cancellation
    follows, and the pool keeps the connection instead of opening a new one."""
    connections = ServerConnections(make_url(await require_server(backend)), {})
    pool = connections.sync_engine.pool
    opened: list[object] = []
    resetting, release = asyncio.Event(), asyncio.Event()
    hold = [True]

    def on_connect(dbapi_connection: object, _record: object) -> None:
        opened.append(dbapi_connection)

    def on_reset(_dbapi_connection: object, _record: object, _state: object) -> None:
        if hold[0]:
            hold[0] = False
            resetting.set()
            await_only(release.wait())  # the hand-back waits here, inside the bridge

    event.listen(pool, "connect", on_connect)
    event.listen(pool, "reset", on_reset)
    try:
        request = asyncio.ensure_future(connections.run(_select_one))
        await bounded(resetting.wait())
        request.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the request while it waits
        assert not request.done()  # it waits for the hand-back to finish
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await bounded(request)
        assert pool.checkedout() == 0
        assert await connections.run(_select_one) == 1
        assert len(opened) == 1  # the same connection served the next use
    finally:
        release.set()
        await connections.close()
