"""How the per-request statements reach each database.

The store's five hot statements (load, insert, update, touch, delete) are written once in
SQLAlchemy Core and compiled once per dialect. Where SQLAlchemy's async layer costs several
times the statement itself (measured in ``docs/performance.md``), they run on the driver
directly: SQLite through the standard ``sqlite3`` module, PostgreSQL through an asyncpg
pool. Other databases run them through SQLAlchemy. Schema work and maintenance (pruning,
statistics, key rotation) always go through SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler

from .errors import StoreError

Row = Sequence[Any]
T = TypeVar("T")

logger = logging.getLogger("quartsess")


class CompiledStatement:
    """A Core statement compiled for one dialect: its SQL and the order of its parameters."""

    def __init__(self, statement: Executable, engine: AsyncEngine, keys: Sequence[str] = ()):
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=engine.dialect, column_keys=list(keys) if keys else None
        )
        if not isinstance(compiled, SQLCompiler):  # pragma: no cover - DDL is never passed
            raise TypeError("only DML statements can be compiled for the hot path")
        self.statement = statement
        self.sql = str(compiled)
        self.order: list[str] = list(compiled.positiontup or [])

    def arguments(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] for name in self.order)


DEADLOCK_RETRIES = 3
MYSQL_DEADLOCK = 1213
MYSQL_LOCK_WAIT_TIMEOUT = 1205


def mysql_error_code(error: DBAPIError) -> int | None:
    """MariaDB/MySQL's error number behind a SQLAlchemy error, if it has one."""
    args: tuple[Any, ...] = tuple(getattr(error.orig, "args", None) or ())
    return args[0] if args and isinstance(args[0], int) else None


async def retry_rolled_back(
    run: Callable[[], Awaitable[T]],
    codes: Container[int],
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Await ``run()``; when MariaDB/MySQL rolled it back with one of the error ``codes``
    (InnoDB undoes a deadlock victim whole), run it again, ``DEADLOCK_RETRIES`` times at
    most in all. Only for work that is one statement or one transaction."""
    attempt = 1
    while True:
        try:
            return await run()
        except DBAPIError as error:
            if mysql_error_code(error) not in codes or attempt >= DEADLOCK_RETRIES:
                raise
            if on_retry is not None:
                on_retry()
            attempt += 1


class StatementRunner(Protocol):
    """Runs compiled statements; raises :class:`StoreError` when the database fails."""

    async def fetch_one(
        self, statement: CompiledStatement, params: Mapping[str, Any]
    ) -> Row | None: ...

    async def rowcount(self, statement: CompiledStatement, params: Mapping[str, Any]) -> int: ...

    async def close(self) -> None: ...


class SqlAlchemyRunner:
    """Through SQLAlchemy's async engine: MariaDB/MySQL, and SQLite URLs that are not a
    plain file path (``:memory:``, ``file:`` URIs)."""

    def __init__(
        self, run: Callable[[Callable[[AsyncConnection], Awaitable[Any]]], Awaitable[Any]]
    ):
        self._run = run

    async def fetch_one(
        self, statement: CompiledStatement, params: Mapping[str, Any]
    ) -> Row | None:
        async def work(connection: AsyncConnection) -> Row | None:
            result = await connection.execute(statement.statement, dict(params))
            row: Row | None = result.first()
            return row

        result: Row | None = await self._run(work)
        return result

    async def rowcount(self, statement: CompiledStatement, params: Mapping[str, Any]) -> int:
        async def work(connection: AsyncConnection) -> int:
            return int((await connection.execute(statement.statement, dict(params))).rowcount)

        async def once() -> int:
            result: int = await self._run(work)
            return result

        # InnoDB resolves a deadlock between a request's one-row write and a prune batch
        # by rolling back the smaller one: the request's. (A lock wait time-out is not
        # retried: it has already kept the request waiting.)
        return await retry_rolled_back(once, (MYSQL_DEADLOCK,), _log_write_retry)

    async def close(self) -> None:
        return None


def _log_write_retry() -> None:
    logger.info("a session write lost a deadlock in the database; retrying it")


class SqliteRunner:
    """``sqlite3`` on the event loop thread, never waiting there for a lock.

    A statement that finds the database locked by another process (``SQLITE_BUSY``) does
    nothing and is re-run on a worker thread whose connection waits up to the busy timeout.
    Uncontended statements take microseconds, so running them inline is cheaper than any
    hand-off to a thread (which is what aiosqlite does for every call).

    The inline connection never checkpoints the WAL itself (a checkpoint copies pages into
    the database file and fsyncs it: milliseconds, on the loop, in whichever write crossed
    the threshold). Every ``CHECKPOINT_EVERY`` inline writes, a passive checkpoint (never
    waits for readers or writers) runs on the worker thread instead.

    Only the URL's file path is used: query options and ``connect_args`` of the URL or
    ``SESSION_ENGINE_OPTIONS`` apply to the SQLAlchemy engine (maintenance) alone."""

    #: Inline writes between two checkpoints (a few pages each: about SQLite's own
    #: default of 1,000 pages).
    CHECKPOINT_EVERY = 250

    def __init__(self, database: str, busy_timeout_ms: int) -> None:
        self._database = database
        self._busy_timeout_ms = busy_timeout_ms
        self._inline: sqlite3.Connection | None = None
        self._waiting: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._opening: asyncio.Lock | None = None
        self._writes = 0  # inline writes since the last checkpoint was started
        self._checkpointing = False

    async def _connections(self) -> tuple[sqlite3.Connection, ThreadPoolExecutor]:
        if self._inline is not None and self._thread is not None:
            return self._inline, self._thread
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._inline is None or self._thread is None:
                thread = ThreadPoolExecutor(1, thread_name_prefix="quartsess-sqlite")
                loop = asyncio.get_running_loop()
                try:
                    inline, waiting = await loop.run_in_executor(thread, self._open_both)
                except sqlite3.Error as error:
                    thread.shutdown(wait=False)
                    raise StoreError(f"cannot open the SQLite database: {error}") from error
                self._inline, self._waiting, self._thread = inline, waiting, thread
        return self._inline, self._thread

    def _open_both(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        directory = os.path.dirname(os.path.abspath(self._database))
        os.makedirs(directory, exist_ok=True)
        waiting = self._open(self._busy_timeout_ms)
        inline = self._open(0)
        inline.execute("PRAGMA wal_autocheckpoint = 0")  # see the class docstring
        return inline, waiting

    def _open(self, busy_timeout_ms: int) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._database, isolation_level=None, check_same_thread=False, timeout=0
        )
        # Switching to WAL may wait for another worker; only then the connection's own
        # busy timeout applies.
        configure_sqlite(connection, self._busy_timeout_ms)
        use_wal(connection, self._busy_timeout_ms)
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        return connection

    async def fetch_one(
        self, statement: CompiledStatement, params: Mapping[str, Any]
    ) -> Row | None:
        result = await self._execute(statement, params, fetch=True)
        return result if result is None or isinstance(result, tuple) else None

    async def rowcount(self, statement: CompiledStatement, params: Mapping[str, Any]) -> int:
        result = await self._execute(statement, params, fetch=False)
        return result if isinstance(result, int) else 0

    async def _execute(
        self, statement: CompiledStatement, params: Mapping[str, Any], *, fetch: bool
    ) -> tuple[Any, ...] | int | None:
        inline, thread = await self._connections()
        arguments = statement.arguments(params)
        try:
            result = _run_sqlite(inline, statement.sql, arguments, fetch)
        except sqlite3.OperationalError as error:
            if not _is_busy(error):
                raise StoreError(f"SQLite: {error}") from error
        else:
            if not fetch:
                self._writes += 1
                if self._writes >= self.CHECKPOINT_EVERY and not self._checkpointing:
                    self._start_checkpoint(thread)
            return result
        waiting = self._waiting
        if waiting is None:  # pragma: no cover - closed while in flight
            raise StoreError("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                thread, _run_sqlite, waiting, statement.sql, arguments, fetch
            )
        except sqlite3.Error as error:
            raise StoreError(f"SQLite: {error}") from error

    def _start_checkpoint(self, thread: ThreadPoolExecutor) -> None:
        waiting = self._waiting
        if waiting is None:  # pragma: no cover - closed while in flight
            return
        self._writes = 0
        self._checkpointing = True
        # A concurrent future: its callback runs on the thread even if this loop is gone.
        thread.submit(_checkpoint, waiting).add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, _future: Future[None]) -> None:
        self._checkpointing = False

    async def close(self) -> None:
        inline, waiting, thread = self._inline, self._waiting, self._thread
        self._inline = self._waiting = self._thread = None
        self._opening = None  # an asyncio.Lock binds to its loop; the next open may be on another
        if inline is not None:
            inline.close()
        if thread is not None:
            if waiting is not None:
                await asyncio.get_running_loop().run_in_executor(thread, waiting.close)
            thread.shutdown(wait=False)


def configure_sqlite(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    """A busy timeout and ``synchronous=NORMAL`` (safe in WAL) on any DB-API connection.
    The file itself is put in WAL mode by :func:`use_wal`, once, before this runs."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def use_wal(connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Put the database file in WAL mode (readers never wait for the writer), so several
    workers can share it. Blocks: call it on a worker thread.

    Switching needs an exclusive lock, and when several connections try at once on a new
    file SQLite answers SQLITE_BUSY at once instead of calling its busy handler (it sees a
    deadlock). The mode is stored in the file, so whoever loses finds it set on a retry.
    """
    deadline = time.monotonic() + max(busy_timeout_ms, 1_000) / 1_000
    delay = 0.001
    while True:
        try:
            [(mode,)] = connection.execute("PRAGMA journal_mode = WAL").fetchall()
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() + delay > deadline:
                raise
        else:
            if str(mode).lower() not in ("wal", "memory"):
                # SQLite answers with the mode it kept when it cannot switch (no error).
                logger.warning(
                    "SQLite kept journal_mode=%s instead of WAL; several workers sharing "
                    "this database will wait for each other's writes and reads",
                    mode,
                )
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _is_busy(error: sqlite3.Error) -> bool:
    # Extended codes (SQLITE_BUSY_SNAPSHOT, _RECOVERY, ...) keep the primary code in
    # their low byte, as SQLite's own retry loop checks it.
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def _checkpoint(connection: sqlite3.Connection) -> None:
    """Copy what the WAL holds into the database file, without waiting for anyone."""
    try:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error:
        pass  # closed, or busy: the next one catches up


def _run_sqlite(
    connection: sqlite3.Connection, sql: str, arguments: tuple[Any, ...], fetch: bool
) -> tuple[Any, ...] | int | None:
    try:
        cursor = connection.execute(sql, arguments)
    except sqlite3.OperationalError:
        raise
    except sqlite3.Error as error:
        raise StoreError(f"SQLite: {error}") from error
    if fetch:
        row: tuple[Any, ...] | None = cursor.fetchone()
        cursor.close()
        return row
    return cursor.rowcount


# asyncpg.connect() keyword arguments that SQLAlchemy's URL translation may produce.
_ASYNCPG_CONNECT_KEYS = frozenset(
    {
        "host",
        "port",
        "user",
        "password",
        "passfile",
        "database",
        "timeout",
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "command_timeout",
        "ssl",
        "direct_tls",
        "server_settings",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    }
)


class AsyncpgRunner:
    """asyncpg connections kept open and handed out by a minimal pool of our own.

    asyncpg's ``Pool`` costs more per checkout than the statement itself: ``acquire``
    with a timeout runs in a task of its own (``wait_for``), ``release`` is shielded in
    another, and each holds proxies and inactivity timers. Here an idle connection is
    a list pop and a release is a list append (or a hand-off to the oldest waiter); only
    a request that finds every connection busy waits, with the acquire time-out.
    Connections only run the five autocommit statements and never change session
    state, so none needs a reset. One that failed or was interrupted in the middle of a
    statement is terminated, never reused."""

    def __init__(self, engine: AsyncEngine, connect_args: Mapping[str, Any], max_size: int):
        _, url_kwargs = engine.dialect.create_connect_args(engine.url)
        kwargs = {k: v for k, v in url_kwargs.items() if k in _ASYNCPG_CONNECT_KEYS}
        kwargs.update(connect_args)
        self._connect_kwargs = kwargs
        self._acquire_timeout = float(kwargs.get("timeout", 5))
        self._max_size = max_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[Any] = []  # connections ready for use, most recently used last
        self._members: set[Any] = set()  # every open connection of this loop
        self._slots = 0  # connections open or being opened (at most max_size)
        # Requests waiting for a connection; each gets one, or None: "a slot is yours,
        # open a connection in it".
        self._waiters: deque[asyncio.Future[Any]] = deque()
        # Bumped by close() and loop changes: a connection opened for an older generation
        # is not this pool's (its slot was already forgotten), so it is terminated.
        self._generation = 0
        import asyncpg  # type: ignore[import-untyped]

        self._errors = _asyncpg_errors()
        self._server_errors: tuple[type[BaseException], ...] = (asyncpg.PostgresError,)
        # Also PostgresErrors, but the connection is gone.
        self._lost: tuple[type[BaseException], ...] = (asyncpg.PostgresConnectionError,)

    async def fetch_one(
        self, statement: CompiledStatement, params: Mapping[str, Any]
    ) -> Row | None:
        row = await self._call("fetchrow", statement, params)
        return None if row is None else tuple(row)

    async def rowcount(self, statement: CompiledStatement, params: Mapping[str, Any]) -> int:
        status = await self._call("execute", statement, params)
        return int(str(status).rsplit(" ", 1)[-1])

    async def _call(
        self, method: str, statement: CompiledStatement, params: Mapping[str, Any]
    ) -> Any:
        """``connection.<method>(sql, *arguments)`` on a pooled connection."""
        connection = await self._acquire()
        try:
            result = await getattr(connection, method)(statement.sql, *statement.arguments(params))
        except BaseException as error:
            replacement = self._failed(connection, error)
            if replacement is None:
                raise
            raise replacement from error
        self._release(connection)
        return result

    # -- the pool -----------------------------------------------------------------------

    async def _acquire(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First use, or the app moved to another event loop (one per test, say):
            # connections cannot cross loops.
            self._forget_all()
            self._loop = loop
        generation = self._generation
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.is_closed():
                return connection
            self._members.discard(connection)
            self._slots -= 1
        if self._slots < self._max_size:
            self._slots += 1
            return await self._connect_in_slot(generation)
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._acquire_timeout):
                connection = await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed something just as we gave up: pass it on.
                handed = waiter.result()
                if handed is None:
                    if generation == self._generation:
                        self._free_slot()
                else:
                    self._release(handed)
            else:
                waiter.cancel()
            if isinstance(error, TimeoutError):
                raise StoreError(
                    f"PostgreSQL: no connection free within {self._acquire_timeout:g} s "
                    f"({self._max_size} in use)"
                ) from error
            raise
        if connection is None:
            return await self._connect_in_slot(generation)
        return connection

    async def _connect_in_slot(self, generation: int) -> Any:
        import asyncpg

        try:
            connection = await asyncpg.connect(**self._connect_kwargs)
        except BaseException as error:
            if generation == self._generation:
                self._free_slot()
            if isinstance(error, self._errors):
                raise StoreError(f"PostgreSQL: {type(error).__name__}: {error}") from error
            raise
        if generation != self._generation:  # the pool was closed while we connected
            connection.terminate()
            raise StoreError("PostgreSQL: the session store was closed")
        self._members.add(connection)
        return connection

    def _release(self, connection: Any) -> None:
        if connection not in self._members:  # opened before close() or on another loop
            connection.terminate()
            return
        if connection.is_closed():
            self._members.discard(connection)
            self._free_slot()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _free_slot(self) -> None:
        """A connection went away: its slot goes to the oldest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._slots -= 1

    def _failed(self, connection: Any, error: BaseException) -> StoreError | None:
        """Release ``connection`` after ``error``; returns the StoreError to raise
        instead, or None to let ``error`` (a cancellation, say) through."""
        if isinstance(error, self._server_errors) and not isinstance(error, self._lost):
            # The server refused the statement; the connection is fine.
            self._release(connection)
            return StoreError(f"PostgreSQL: {type(error).__name__}: {error}")
        # Broken, timed out or cancelled mid-statement: its state is unknown.
        connection.terminate()
        if connection in self._members:
            self._members.discard(connection)
            self._free_slot()
        if isinstance(error, self._errors):
            return StoreError(f"PostgreSQL: {type(error).__name__}: {error}")
        return None

    def _forget_all(self) -> None:
        # Connections of a loop that is gone cannot even be closed from here; they
        # are dropped (the server ends them when their sockets close).
        self._generation += 1
        self._idle = []
        self._members = set()
        self._slots = 0
        self._waiters = deque()

    async def close(self) -> None:
        idle, loop, waiters = self._idle, self._loop, self._waiters
        self._forget_all()
        for waiter in waiters:  # requests waiting for a connection fail now, not later
            if not waiter.done():
                waiter.set_exception(StoreError("PostgreSQL: the session store was closed"))
        self._loop = None
        if loop is not asyncio.get_running_loop():
            return
        for connection in idle:
            try:
                await connection.close(timeout=self._acquire_timeout)
            except self._errors:
                connection.terminate()


def _asyncpg_errors() -> tuple[type[BaseException], ...]:
    """What asyncpg raises when the database cannot answer (all become StoreError)."""
    import asyncpg

    return (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    )


def choose_runner(
    engine: AsyncEngine,
    url: URL,
    options: Mapping[str, Any],
    connect_args: Mapping[str, Any],
    run: Callable[[Callable[[AsyncConnection], Awaitable[Any]]], Awaitable[Any]],
    sqlite_busy_timeout_ms: int,
) -> StatementRunner:
    """The fastest correct runner for ``url`` (see the module docstring)."""
    driver = url.get_driver_name()
    backend = url.get_backend_name()
    if backend == "sqlite" and driver == "aiosqlite":
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            return SqliteRunner(database, sqlite_busy_timeout_ms)
    if backend == "postgresql" and driver == "asyncpg":
        max_size = int(options.get("pool_size", 5)) + int(options.get("max_overflow", 10))
        return AsyncpgRunner(engine, connect_args, max(max_size, 1))
    return SqlAlchemyRunner(run)
