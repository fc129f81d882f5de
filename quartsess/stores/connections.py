"""The SQLAlchemy engine and its connections, for schema work, maintenance and the
databases whose per-request statements go through SQLAlchemy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from .sqlite_runner import SQLITE_BUSY_TIMEOUT_MS, configure_sqlite, prepare_sqlite_file

T = TypeVar("T")

# An outage should give a fast 503, not a request hanging on a TCP connect.
_CONNECT_TIMEOUTS: dict[str, dict[str, Any]] = {
    "postgresql": {"timeout": 5, "command_timeout": 30},
    "mysql": {"connect_timeout": 5},
    "mariadb": {"connect_timeout": 5},
}


# Unnamed statements only (asyncpg's cache and SQLAlchemy's both hold named ones), so
# maintenance works through a pooler in transaction mode (PgBouncer, managed poolers),
# where consecutive statements may run on different server connections.
_POOLER_SAFE: dict[str, dict[str, Any]] = {
    "asyncpg": {"statement_cache_size": 0, "prepared_statement_cache_size": 0},
}


def effective_connect_args(url: URL, options: Mapping[str, Any]) -> dict[str, Any]:
    """Driver connect arguments: short default timeouts and pooler-safe statements,
    overridden by the app's."""
    connect_args = dict(_CONNECT_TIMEOUTS.get(url.get_backend_name(), {}))
    if url.get_backend_name() == "postgresql":
        connect_args.update(_POOLER_SAFE.get(url.get_driver_name(), {}))
    connect_args.update(options.get("connect_args", {}))
    return connect_args


def create_engine(url: URL, options: Mapping[str, Any]) -> AsyncEngine:
    """The SQLAlchemy engine for ``url``: autocommit statements, hidden parameters, and on
    SQLite one connection per process in WAL mode with a busy timeout. ``options`` are
    the app's ``SESSION_ENGINE_OPTIONS``, applied last."""
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "hide_parameters": True}
    if backend == "sqlite":
        # One connection per process: SQLite serializes writers anyway, and a pool of
        # several aiosqlite threads adds checkout cost and lock stalls.
        kwargs["poolclass"] = StaticPool
    if url.get_driver_name() == "asyncpg":
        # Requests use their own asyncpg pool; this engine only serves maintenance,
        # where a liveness check per checkout is cheap insurance after outages.
        kwargs["pool_pre_ping"] = True
    connect_args = effective_connect_args(url, options)
    kwargs.update(options)
    if connect_args:
        kwargs["connect_args"] = connect_args
    engine = create_async_engine(url, **kwargs)
    if backend == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    configure_sqlite(dbapi_connection, SQLITE_BUSY_TIMEOUT_MS)


class Connections:
    """Hands out connections of ``engine``: this process's one connection on SQLite
    (behind a lock, opened after the file is in WAL mode), a pooled one elsewhere."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._single_connection = engine.dialect.name == "sqlite"
        self._in_memory = self._single_connection and _is_in_memory(engine)
        self._file_ready = False
        self._connection_loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        #: Keep pooled connections open between uses (while the app serves); when False
        #: the pool is emptied after each use, so nothing is left for the garbage
        #: collector of an app that is never shut down (``test_client()`` alone).
        self.keep_open = True
        self._in_use = 0

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Await ``work(connection)`` and give the connection back."""
        if not self._single_connection:
            async with self.pooled() as connection:
                return await work(connection)
        loop = asyncio.get_running_loop()
        if self._lock is None or self._connection_loop is not loop:
            # First use, or the app moved to a new event loop (e.g. one per test):
            # an asyncio.Lock cannot cross loops.
            self._lock = asyncio.Lock()
            self._connection_loop = loop
        async with self._lock:
            if not self._file_ready:
                await self._prepare_sqlite_file()
                self._file_ready = True
            try:
                # StaticPool hands out its one DBAPI connection every time; checking it
                # out per call leaves nothing checked out for the garbage collector.
                async with self.engine.connect() as connection:
                    return await work(connection)
            finally:
                if not self.keep_open and not self._in_memory:
                    # An in-memory database lives in that connection: keep it.
                    await self.engine.dispose()

    @asynccontextmanager
    async def pooled(self) -> AsyncIterator[AsyncConnection]:
        """A connection of the pool for a block (server databases only)."""
        self._in_use += 1
        try:
            async with self.engine.connect() as connection:
                yield connection
        finally:
            self._in_use -= 1
            if not self.keep_open and not self._in_use:
                await self.engine.dispose()

    async def _prepare_sqlite_file(self) -> None:
        # The file exactly as the engine opens it: a "file:" URI keeps its options
        # (mode=memory, ...), which a bare "file:x" would turn into a file named x.
        [database], options = self.engine.dialect.create_connect_args(self.engine.url)
        if database == ":memory:":
            return
        is_uri = bool(options.get("uri"))
        await asyncio.get_running_loop().run_in_executor(
            None, prepare_sqlite_file, database, is_uri
        )

    async def close(self) -> None:
        """Close the connections (new ones are opened if used again)."""
        if self._lock is not None and self._connection_loop is asyncio.get_running_loop():
            async with self._lock:
                await self.engine.dispose()
        else:
            await self.engine.dispose()


def _is_in_memory(engine: AsyncEngine) -> bool:
    [database], options = engine.dialect.create_connect_args(engine.url)
    return database == ":memory:" or (bool(options.get("uri")) and "mode=memory" in database)


# PostgreSQL advisory locks: transaction-scoped, taken and held inside one transaction,
# because a pooler in transaction mode may run each statement outside a transaction on
# another server connection. A session lock would be taken on one, "released" on
# another, and left behind for good.


@asynccontextmanager
async def postgresql_try_lock(connections: Connections, key: int) -> AsyncIterator[bool]:
    """Hold the advisory lock ``key`` for the block if nobody holds it (yields whether it
    was acquired), in a transaction kept open for the block on one connection: a
    pooler keeps its server connection for it, and the lock ends with it whatever
    happens (commit, rollback, or the connection lost)."""
    async with connections.pooled() as connection:
        await connection.execution_options(isolation_level="READ COMMITTED")
        async with connection.begin():
            result = await connection.execute(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}
            )
            yield bool(result.scalar())


async def run_locked_postgresql(
    connection: AsyncConnection, key: int, work: Callable[[], Awaitable[T]]
) -> T:
    """Await ``work()`` in one transaction of ``connection`` that first waits for the
    advisory lock ``key``; it is released at commit or rollback."""
    await connection.execution_options(isolation_level="READ COMMITTED")
    async with connection.begin():
        await connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        return await work()
