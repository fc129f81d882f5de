"""SQLAlchemy connections for schema work, maintenance and the databases whose
per-request statements go through SQLAlchemy.

Work is a plain function of a synchronous :class:`~sqlalchemy.engine.Connection`, so one
implementation of every maintenance statement serves both kinds of database:

- SQLite: a synchronous engine on the standard library's ``sqlite3``, its one connection
  used on a worker thread. This keeps SQLAlchemy's asyncio extension (which imports the
  ORM) and aiosqlite out of the process: every full garbage collection walks what a
  module import leaves behind (see docs/performance.md).
- PostgreSQL, MariaDB/MySQL: a SQLAlchemy engine on the URL's asyncio driver, the work
  run in SQLAlchemy's greenlet bridge (``greenlet_spawn``, what ``AsyncConnection.run_sync``
  does inside), again without the asyncio extension's import of the ORM.
- An app's own engine (``Session(app, engine=...)``), whatever its database: the same
  bridge on connections of the app's pool (:meth:`ServerConnections.sharing`)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import greenlet_spawn

from ..errors import ConfigurationError, SessionStoreUnavailable
from .sqlite_files import OpenedFiles, SqliteFiles, safe_to_close
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


class Connections(Protocol):
    """Runs work with a connection of the store's database."""

    url: URL
    dialect: Dialect
    #: Keep connections open between uses (while the app serves); when False they are
    #: closed after each use, so nothing is left for the garbage collector of an app
    #: that is never shut down (``test_client()`` alone).
    keep_open: bool

    @property
    def sync_engine(self) -> Engine:
        """The synchronous engine behind the connections (for event listeners)."""

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Call ``work(connection)`` and give the connection back."""

    async def run_statement(self, work: Callable[[Connection], T]) -> T:
        """:meth:`run` for ``work`` that runs one statement: committed when it returns."""

    async def close(self) -> None:
        """Close the connections (new ones are opened if used again)."""


def open_connections(url: URL, options: Mapping[str, Any]) -> Connections:
    """The connections for ``url``: autocommit statements and hidden parameters, and the
    app's ``SESSION_ENGINE_OPTIONS`` applied last."""
    if url.get_backend_name() == "sqlite":
        return SqliteConnections(url, options)
    return ServerConnections(url, options)


class SqliteConnections:
    """One ``sqlite3`` connection per process (SQLite serializes writers anyway), in WAL
    mode with a busy timeout, used on a worker thread of its own.

    On a database file, :attr:`files` is checked before each use, as the per-request
    runner does (``quartsess.stores.sqlite_files``); the store hands the same object to
    its runner."""

    def __init__(self, url: URL, options: Mapping[str, Any]) -> None:
        connect_args = {"check_same_thread": False, **effective_connect_args(url, options)}
        kwargs: dict[str, Any] = {
            "isolation_level": "AUTOCOMMIT",
            "hide_parameters": True,
            "poolclass": StaticPool,
            **options,
            "connect_args": connect_args,
        }
        # Whatever async driver the URL names, maintenance needs only the standard library.
        self._engine = create_sync_engine(url.set(drivername="sqlite+pysqlite"), **kwargs)
        event.listen(self._engine, "connect", _sqlite_on_connect)
        self.url = url
        self.dialect = self._engine.dialect
        self.keep_open = True
        [database], connect_options = self.dialect.create_connect_args(self._engine.url)
        self._database: str = database
        self._is_uri = bool(connect_options.get("uri"))
        self._in_memory = database == ":memory:" or (
            self._is_uri
            and ("mode=memory" in database or database.split("?", 1)[0] == "file::memory:")
        )
        self._file_ready = False
        #: The database file's guard; None for an in-memory database or a "file:" URI.
        self.files: SqliteFiles | None = (
            None if self._in_memory or self._is_uri else SqliteFiles(database)
        )
        self._opened: OpenedFiles | None = None  # the files the connection opened
        self._dbapi: Any = None  # that connection's sqlite3.Connection
        # The connection is used by one thread at a time, whoever awaits: a caller
        # cancelled while its work runs must not let the next caller's work start on it.
        self._in_use = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def sync_engine(self) -> Engine:
        return self._engine

    async def run(self, work: Callable[[Connection], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="quartsess-sqlite")
        executor = self._executor
        # The caller's context goes along, as through SQLAlchemy's async bridge, so
        # engine event listeners (tracing, say) see it.
        context = contextvars.copy_context()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                executor, context.run, self._run, work
            )
        finally:
            if not self.keep_open and self._executor is executor:
                # Not serving: no idle thread is left behind either (queued work still runs).
                self._executor = None
                executor.shutdown(wait=False)

    run_statement = run  # every statement autocommits

    def _run(self, work: Callable[[Connection], T]) -> T:
        with self._in_use:
            files = self.files
            if files is not None:
                if self._opened is not None and not files.check(self._opened):
                    self._dispose()  # its database is no longer at the path
                if self._opened is None:
                    files.may_open()
            if not self._file_ready and not self._in_memory:
                # The file exactly as the engine opens it: a "file:" URI keeps its options
                # (mode=memory, ...), which a bare "file:x" would turn into a file named x.
                prepare_sqlite_file(self._database, self._is_uri)
                self._file_ready = True
            try:
                with self._engine.connect() as connection:
                    if files is not None and self._opened is None:
                        self._dbapi = connection.connection.dbapi_connection
                        self._opened = files.opened()
                        if not files.check(self._opened):
                            raise SessionStoreUnavailable(
                                f"the SQLite database {self._database} changed"
                            )
                    return work(connection)
            finally:
                if not self.keep_open and not self._in_memory:
                    # An in-memory database lives in that connection: keep it.
                    self._dispose()

    def _dispose(self) -> None:
        """Close the connection (see ``safe_to_close``); called holding ``_in_use``."""
        if self._dbapi is None or safe_to_close(self.files, self._opened, self._dbapi):
            self._engine.dispose()
            self._opened = self._dbapi = None

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        # On a thread (the default one when this store's is gone): work of a cancelled
        # caller may still hold the connection, and the event loop never waits for it.
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._dispose_when_free)
        finally:
            if executor is not None:
                executor.shutdown(wait=False)

    def _dispose_when_free(self) -> None:
        with self._in_use:
            self._dispose()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    configure_sqlite(dbapi_connection, SQLITE_BUSY_TIMEOUT_MS)


class ServerConnections:
    """Pooled connections on an asyncio driver (PostgreSQL, MariaDB/MySQL; with an app's
    own engine, SQLite's aiosqlite too).

    The engine is SQLAlchemy's ordinary one: with an asyncio driver it pools with
    ``AsyncAdaptedQueuePool`` and each call that does I/O must run inside
    ``greenlet_spawn``, which :meth:`run` and :meth:`call` do. ``create_async_engine``
    wraps the same engine, but importing it loads the ORM (about 10,000 objects that
    every full garbage collection would walk)."""

    def __init__(self, url: URL, options: Mapping[str, Any]) -> None:
        kwargs: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "hide_parameters": True}
        if url.get_driver_name() == "asyncpg":
            # Requests use their own asyncpg pool; this engine only serves maintenance,
            # where a liveness check per checkout is cheap insurance after outages.
            kwargs["pool_pre_ping"] = True
        connect_args = effective_connect_args(url, options)
        kwargs.update(options)
        if connect_args:
            kwargs["connect_args"] = connect_args
        async_creator = kwargs.pop("async_creator", None)
        if async_creator is not None:
            # What create_async_engine does with it: the driver's adapter wraps the
            # connections the app's coroutine function makes.
            if kwargs.get("creator") is not None:
                raise ConfigurationError(
                    "SESSION_ENGINE_OPTIONS", "give async_creator or creator, not both"
                )

            def creator() -> Any:
                dbapi: Any = engine.dialect.dbapi
                return dbapi.connect(async_creator_fn=async_creator)

            kwargs["creator"] = creator
        engine = create_sync_engine(url, **kwargs)
        if not engine.dialect.is_async:
            raise ConfigurationError(
                "SESSION_DB_URL", f"{url.drivername!r} is not an asyncio driver"
            )
        self._use(engine, engine, owned=True)

    @classmethod
    def sharing(cls, engine: Engine) -> ServerConnections:
        """Connections of ``engine``'s pool (an app's own engine, the ``sync_engine`` of
        its ``AsyncEngine``), which stays the app's: never disposed, its settings
        unchanged for the app's other users.

        Work runs on autocommit connections (an isolation level set per connection
        while it is checked out, through an engine that shares ``engine``'s pool).
        PostgreSQL's asyncpg switches autocommit on the client; MariaDB/MySQL and
        SQLite set it, and reset it, on the server or the driver's thread each time,
        so there :meth:`run_statement` runs its statement in a transaction of its own
        instead: one ``COMMIT`` where autocommit would take three more round trips."""
        connections = cls.__new__(cls)
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        client_side = engine.dialect.name == "postgresql"
        connections._use(autocommit, autocommit if client_side else engine, owned=False)
        return connections

    def _use(self, engine: Engine, statement_engine: Engine, *, owned: bool) -> None:
        self._engine = engine
        self._statement_engine = statement_engine
        self._owned = owned
        self.url = engine.url
        self.dialect = engine.dialect
        self.keep_open = True
        self._in_use = 0

    @property
    def sync_engine(self) -> Engine:
        return self._engine

    @property
    def owned(self) -> bool:
        """Whether the engine is this object's own (False: an app's, never disposed)."""
        return self._owned

    async def run(self, work: Callable[[Connection], T]) -> T:
        async with self.pooled() as connection:
            return await greenlet_spawn(work, connection)

    async def run_statement(self, work: Callable[[Connection], T]) -> T:
        if self._statement_engine is self._engine:
            return await self.run(work)
        async with self._pooled(self._statement_engine) as connection:
            return await greenlet_spawn(_in_transaction, work, connection)

    @staticmethod
    async def call(function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` where it may use a connection of :meth:`pooled`."""
        return await greenlet_spawn(function, *args)

    def pooled(self) -> AbstractAsyncContextManager[Connection]:
        """A connection of the pool for a block; use it only through :meth:`call`."""
        return self._pooled(self._engine)

    @asynccontextmanager
    async def _pooled(self, engine: Engine) -> AsyncIterator[Connection]:
        self._in_use += 1
        try:
            connection = await greenlet_spawn(engine.connect)
            try:
                yield connection
            finally:
                # Returning it to the pool rolls back (a round trip); cut short by a
                # cancellation (a client that went away), the connection would be lost.
                await _to_completion(greenlet_spawn(connection.close))
        finally:
            self._in_use -= 1
            if self._owned and not self.keep_open and not self._in_use:
                await _to_completion(greenlet_spawn(self._engine.dispose))

    async def close(self) -> None:
        if self._owned:
            await greenlet_spawn(self._engine.dispose)


def _in_transaction(work: Callable[[Connection], T], connection: Connection) -> T:
    with connection.begin():
        return work(connection)


def twin_engine(engine: Engine) -> Engine:
    """A new engine made like ``engine`` (its URL, dialect, driver arguments, execution
    options, and its pool's class, settings and listeners) with an empty pool of its
    own: for work on another event loop than the app's (a ``quart sessions`` command),
    disposed afterwards without touching ``engine`` or its connections."""
    return Engine(
        engine.pool.recreate(),
        engine.dialect,
        engine.url,
        logging_name=engine.logging_name,
        echo=engine.echo,
        execution_options=engine.get_execution_options(),
        hide_parameters=engine.hide_parameters,
    )


async def _to_completion(cleanup: Coroutine[Any, Any, T]) -> T:
    """Await ``cleanup`` in a task of its own until it is done, even when the caller is
    cancelled meanwhile; the cancellation is raised after it (as SQLAlchemy's
    ``AsyncConnection`` does for its close)."""
    task = asyncio.ensure_future(cleanup)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError as error:
            if task.done():
                raise
            cancelled = error
        else:
            break
    if cancelled is not None:
        raise cancelled
    return result


# PostgreSQL advisory locks: transaction-scoped, taken and held inside one transaction,
# because a pooler in transaction mode may run each statement outside a transaction on
# another server connection. A session lock would be taken on one, "released" on
# another, and left behind for good.


@asynccontextmanager
async def postgresql_try_lock(connections: ServerConnections, key: int) -> AsyncIterator[bool]:
    """Hold the advisory lock ``key`` for the block if nobody holds it (yields whether it
    was acquired), in a transaction kept open for the block on one connection: a
    pooler keeps its server connection for it, and the lock ends with it whatever
    happens (commit, rollback, or the connection lost)."""

    def begin_and_try(connection: Connection) -> bool:
        connection.execution_options(isolation_level="READ COMMITTED")
        connection.begin()
        return bool(
            connection.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar()
        )

    async with connections.pooled() as connection:
        yield await connections.call(begin_and_try, connection)
        # Reached only when the block ended normally; otherwise closing the connection
        # rolls the transaction back. Either way the lock ends with it.
        await connections.call(connection.commit)


def run_locked_postgresql(connection: Connection, key: int, work: Callable[[], T]) -> T:
    """Call ``work()`` in one transaction of ``connection`` that first waits for the
    advisory lock ``key``; it is released at commit or rollback."""
    connection.execution_options(isolation_level="READ COMMITTED")
    with connection.begin():
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        return work()
