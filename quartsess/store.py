"""Async SQL storage of session rows. Knows nothing of Quart; sees only bytes and integers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import (
    MetaData,
    Table,
    bindparam,
    case,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from .drivers import (
    MYSQL_DEADLOCK,
    MYSQL_LOCK_WAIT_TIMEOUT,
    CompiledStatement,
    SqliteRunner,
    StatementRunner,
    choose_runner,
    configure_sqlite,
    retry_rolled_back,
    use_wal,
)
from .errors import StoreError
from .schema import build_table

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 10_000
# An outage should give a fast 503, not a request hanging on a TCP connect.
_CONNECT_TIMEOUTS: dict[str, dict[str, Any]] = {
    "postgresql": {"timeout": 5, "command_timeout": 30},
    "mysql": {"connect_timeout": 5},
    "mariadb": {"connect_timeout": 5},
}
# Any of these means "the store cannot answer now" (a 503), never "no session".
STORE_ERRORS: tuple[type[BaseException], ...] = (
    StoreError,
    SQLAlchemyError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class StoredSession:
    """One row of the sessions table."""

    id_hash: str = field(repr=False)
    payload: bytes = field(repr=False)
    version: int
    created_at: int
    touched_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Size of the sessions table: rows, rows past their deadline, payload bytes."""

    rows: int
    expired_rows: int
    payload_bytes: int
    largest_payload_bytes: int


def create_engine(url: URL, options: Mapping[str, Any]) -> AsyncEngine:
    """The SQLAlchemy engine for schema work and maintenance (the per-request statements
    run through :mod:`quartsess.drivers`): autocommit statements, hidden parameters, and
    on SQLite one connection per process in WAL mode with a busy timeout."""
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "hide_parameters": True}
    if backend == "sqlite":
        # One connection per process: SQLite serializes writers anyway, and a pool of
        # several aiosqlite threads adds checkout cost and lock stalls.
        kwargs["poolclass"] = StaticPool
    if url.get_driver_name() == "asyncpg":
        # Requests use their own asyncpg pool (see drivers.py); this engine only serves
        # maintenance, where a liveness check per checkout is cheap insurance after outages.
        kwargs["pool_pre_ping"] = True
    connect_args = effective_connect_args(url, options)
    kwargs.update(options)
    if connect_args:
        kwargs["connect_args"] = connect_args
    engine = create_async_engine(url, **kwargs)
    if backend == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    return engine


def effective_connect_args(url: URL, options: Mapping[str, Any]) -> dict[str, Any]:
    """Driver connect arguments: short default timeouts, overridden by the app's."""
    connect_args = dict(_CONNECT_TIMEOUTS.get(url.get_backend_name(), {}))
    connect_args.update(options.get("connect_args", {}))
    return connect_args


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    configure_sqlite(dbapi_connection, SQLITE_BUSY_TIMEOUT_MS)


def _prepare_sqlite_file(database: str, is_uri: bool) -> None:
    """Create the file's directory and put the file in WAL mode (blocks: run on a thread)."""
    if not is_uri:
        os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
    try:
        connection = sqlite3.connect(database, uri=is_uri, timeout=0, isolation_level=None)
        try:
            use_wal(connection, SQLITE_BUSY_TIMEOUT_MS)
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise StoreError(f"cannot open the SQLite database: {error}") from error


class SessionStore:
    """Load, insert, update, touch and delete session rows; one statement each."""

    def __init__(
        self, engine: AsyncEngine, table_name: str, options: Mapping[str, Any] | None = None
    ) -> None:
        self.engine = engine
        self.table: Table = build_table(MetaData(), table_name)
        self._single_connection = engine.dialect.name == "sqlite"
        self._connection: AsyncConnection | None = None
        self._connection_loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._ready = False
        t = self.table
        by_id = t.c.id_hash == bindparam("h")
        by_id_and_version = (by_id, t.c.version == bindparam("old_version"))
        self._hot = {
            "load": CompiledStatement(
                select(
                    t.c.payload, t.c.version, t.c.created_at, t.c.touched_at, t.c.expires_at
                ).where(by_id),
                engine,
            ),
            "insert": CompiledStatement(insert(t), engine, [c.name for c in t.columns]),
            "update": CompiledStatement(
                update(t)
                .where(*by_id_and_version)
                .values(
                    payload=bindparam("new_payload"),
                    version=bindparam("new_version"),
                    touched_at=bindparam("new_touched"),
                    expires_at=bindparam("new_expires"),
                ),
                engine,
            ),
            "touch": CompiledStatement(
                update(t)
                .where(by_id)
                .values(touched_at=bindparam("new_touched"), expires_at=bindparam("new_expires")),
                engine,
            ),
            "delete": CompiledStatement(delete(t).where(by_id), engine),
            "delete_version": CompiledStatement(delete(t).where(*by_id_and_version), engine),
        }
        #: Callables told the name of each per-request statement before it runs
        #: (``"load"``, ``"insert"``, ``"update"``, ``"touch"``, ``"delete"``): for
        #: metrics, tracing, or tests that count database round trips.
        self.statement_listeners: list[Callable[[str], None]] = []
        options = options or {}
        self._runner: StatementRunner = choose_runner(
            engine,
            engine.url,
            options,
            effective_connect_args(engine.url, options),
            self.run,
            SQLITE_BUSY_TIMEOUT_MS,
        )

    @classmethod
    def from_url(cls, url: URL, table_name: str, options: Mapping[str, Any]) -> SessionStore:
        return cls(create_engine(url, options), table_name, options)

    # -- connections --------------------------------------------------------------

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` with a SQLAlchemy connection: this process's one connection on
        SQLite, a pooled one elsewhere. For schema work and maintenance; the per-request
        statements take the faster paths of :mod:`quartsess.drivers`."""
        if not self._single_connection:
            async with self.engine.connect() as connection:
                return await work(connection)
        loop = asyncio.get_running_loop()
        if self._lock is None or self._connection_loop is not loop:
            # First use, or the app moved to a new event loop (e.g. one per test):
            # connections and locks cannot cross loops.
            self._lock = asyncio.Lock()
            self._connection = None
            self._connection_loop = loop
        async with self._lock:
            if self._connection is None:
                await self._prepare_sqlite_file()
                self._connection = await self.engine.connect()
            try:
                return await work(self._connection)
            except DBAPIError as error:
                if error.connection_invalidated:
                    await self._drop_connection()
                raise

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close()
            except SQLAlchemyError:
                pass  # it is already broken; the next statement opens a new one

    async def _prepare_sqlite_file(self) -> None:
        # The file exactly as the engine opens it: a "file:" URI keeps its options
        # (mode=memory, ...), which a bare "file:x" would turn into a file named x.
        [database], options = self.engine.dialect.create_connect_args(self.engine.url)
        if database == ":memory:":
            return
        is_uri = bool(options.get("uri"))
        await asyncio.get_running_loop().run_in_executor(
            None, _prepare_sqlite_file, database, is_uri
        )

    async def close(self) -> None:
        """Close every connection (the store opens new ones if used again)."""
        await self._runner.close()
        if self._lock is not None and self._connection_loop is asyncio.get_running_loop():
            async with self._lock:
                await self._drop_connection()
        self._connection = None
        await self.engine.dispose()
        self._ready = False

    # -- schema ---------------------------------------------------------------------

    async def prepare(self, *, create_table: bool) -> None:
        """Check the database answers and, if asked, create the table when missing.

        Safe when several workers start at the same moment."""
        if self._ready:
            return
        if create_table:
            await self.run(self._create_table)
        else:
            await self.run(lambda c: c.execute(text("SELECT 1")))
        self._ready = True

    async def _create_table(self, connection: AsyncConnection) -> None:
        dialect = connection.dialect.name
        if dialect == "postgresql":
            # Two workers creating the table at once collide in pg_type; serialize them.
            lock_key = hash_lock_key(self.table.name)
            await connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key})
            try:
                await connection.run_sync(self._create_missing)
            finally:
                await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key})
            return
        try:
            await connection.run_sync(self._create_missing)
        except DBAPIError:
            # Another worker created it between our check and our CREATE.
            if not await connection.run_sync(self._table_exists):
                raise

    def _create_missing(self, connection: Connection) -> None:
        self.table.metadata.create_all(connection, tables=[self.table], checkfirst=True)

    def _table_exists(self, connection: Connection) -> bool:
        return inspect(connection).has_table(self.table.name)

    # -- rows -----------------------------------------------------------------------

    async def load(self, id_hash: str) -> StoredSession | None:
        row = await self._fetch_one("load", {"h": id_hash})
        if row is None:
            return None
        return StoredSession(id_hash, bytes(row[0]), row[1], row[2], row[3], row[4])

    async def insert(self, row: StoredSession) -> None:
        values = {
            "id_hash": row.id_hash,
            "payload": row.payload,
            "version": row.version,
            "created_at": row.created_at,
            "touched_at": row.touched_at,
            "expires_at": row.expires_at,
        }
        await self._hot_rowcount("insert", values)

    async def update(
        self,
        id_hash: str,
        *,
        expected_version: int,
        payload: bytes,
        touched_at: int,
        expires_at: int,
    ) -> bool:
        """Write new content if the row still has ``expected_version``; False otherwise
        (the row changed under us, or it is gone: a save never re-creates a row)."""
        params = {
            "h": id_hash,
            "old_version": expected_version,
            "new_version": expected_version + 1,
            "new_payload": payload,
            "new_touched": touched_at,
            "new_expires": expires_at,
        }
        return await self._hot_rowcount("update", params) == 1

    async def touch(self, id_hash: str, *, touched_at: int, expires_at: int) -> bool:
        """Extend the idle deadline; False if the row is gone."""
        params = {"h": id_hash, "new_touched": touched_at, "new_expires": expires_at}
        return await self._hot_rowcount("touch", params) == 1

    async def delete(self, id_hash: str) -> None:
        await self._hot_rowcount("delete", {"h": id_hash})

    async def _fetch_one(self, name: str, params: dict[str, Any]) -> Sequence[Any] | None:
        for listener in self.statement_listeners:
            listener(name)
        return await self._runner.fetch_one(self._hot[name], params)

    @property
    def writes_inline(self) -> bool:
        """Whether per-request statements run on the event loop without waiting (SQLite's
        inline path): nothing in them can be cancelled half-way or time out."""
        return isinstance(self._runner, SqliteRunner)

    async def _hot_rowcount(self, name: str, params: dict[str, Any]) -> int:
        for listener in self.statement_listeners:
            listener(name)
        return await self._runner.rowcount(self._hot[name], params)

    async def _rowcount(self, statement: Any, params: dict[str, Any]) -> int:
        async def work(connection: AsyncConnection) -> int:
            result = await connection.execute(statement, params)
            return int(result.rowcount)

        return await self.run(work)

    # -- maintenance: pruning, statistics, key rotation ------------------------------

    async def delete_expired(self, now: int, limit: int) -> int:
        """Delete at most ``limit`` rows whose deadline ``expires_at`` is at or before
        ``now``, oldest first, in one statement on the indexed column; returns how many.

        Safe to run from several processes at once: PostgreSQL skips rows another pruner
        has locked, MariaDB/MySQL lock in index order, SQLite serializes writers."""
        dialect = self.engine.dialect
        t = self.table
        statement: Any
        if dialect.name in ("mysql", "mariadb"):
            # MariaDB/MySQL reject LIMIT inside an IN subquery but have DELETE ... LIMIT.
            name = dialect.identifier_preparer.quote(t.name)
            statement = text(
                f"DELETE FROM {name} WHERE expires_at <= :now "  # noqa: S608 - validated name
                f"ORDER BY expires_at, id_hash LIMIT {int(limit)}"
            )
        else:
            # SQLite has no DELETE ... LIMIT: delete the keys of one bounded batch.
            batch = (
                select(t.c.id_hash)
                .where(t.c.expires_at <= bindparam("now"))
                .order_by(t.c.expires_at)
                .limit(limit)
            )
            if dialect.name == "postgresql":
                batch = batch.with_for_update(skip_locked=True)
            statement = delete(t).where(t.c.id_hash.in_(batch.scalar_subquery()))
        # InnoDB may pick a batch as a deadlock victim against a request's write; the
        # batch was rolled back whole, so running it again is safe.
        return await retry_rolled_back(
            lambda: self._rowcount(statement, {"now": now}),
            (MYSQL_DEADLOCK, MYSQL_LOCK_WAIT_TIMEOUT),
        )

    @asynccontextmanager
    async def try_lock(self, name: str) -> AsyncIterator[bool]:
        """Hold a cluster-wide lock called ``name`` for the block if nobody else holds it.

        On PostgreSQL a session advisory lock (``pg_try_advisory_lock``), on MariaDB/MySQL
        a named lock (``GET_LOCK``), each on a connection kept for the block and released
        on that same connection; yields whether it was acquired. SQLite has no such lock
        (its writers are serialized anyway); this yields True and callers must be correct
        when run concurrently."""
        dialect = self.engine.dialect.name
        key: int | str
        if dialect == "postgresql":
            key = hash_lock_key(f"{name}:{self.table.name}")
            take, give = "SELECT pg_try_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
        elif dialect in ("mysql", "mariadb"):
            key = f"quartsess:{hash_lock_key(f'{name}:{self.table.name}')}"  # <= 64 chars
            take, give = "SELECT GET_LOCK(:k, 0)", "SELECT RELEASE_LOCK(:k)"
        else:
            yield True
            return
        async with self.engine.connect() as connection:
            result = await connection.execute(text(take), {"k": key})
            if result.scalar() != 1:
                yield False
                return
            try:
                yield True
            finally:
                try:
                    await connection.execute(text(give), {"k": key})
                except BaseException:
                    # Never hand a connection that may still hold the lock back to the
                    # pool: closing it releases the lock on the server.
                    await connection.invalidate()
                    raise

    async def stats(self, now: int) -> StoreStats:
        """Row count, rows expired at ``now``, and total and largest payload sizes."""
        t = self.table
        size = func.length(t.c.payload)
        query = select(
            func.count(),
            func.coalesce(func.sum(case((t.c.expires_at <= now, 1), else_=0)), 0),
            func.coalesce(func.sum(size), 0),
            func.coalesce(func.max(size), 0),
        ).select_from(t)

        async def work(connection: AsyncConnection) -> StoreStats:
            row = (await connection.execute(query)).one()
            return StoreStats(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

        return await self.run(work)

    async def scan(self, after: str, limit: int) -> list[tuple[str, bytes, int]]:
        """Up to ``limit`` rows ``(id_hash, payload, version)`` whose id_hash sorts after
        ``after`` (use ``""`` to start), in id_hash order: walks the whole table in
        batches without holding anything between them."""
        t = self.table
        query = (
            select(t.c.id_hash, t.c.payload, t.c.version)
            .where(t.c.id_hash > after)
            .order_by(t.c.id_hash)
            .limit(limit)
        )

        async def work(connection: AsyncConnection) -> list[tuple[str, bytes, int]]:
            result = await connection.execute(query)
            return [(row[0], bytes(row[1]), int(row[2])) for row in result]

        return await self.run(work)

    async def replace_payloads(self, rows: Sequence[tuple[str, int, bytes]]) -> int:
        """For each ``(id_hash, version, payload)``, store the new ciphertext if the row
        still has that version; returns how many rows were replaced.

        Meant for re-encrypting unchanged content (key rotation): the version is kept, so
        a request holding the row still saves normally, and a row that a request changed
        in the meantime is left alone."""
        t = self.table
        statement = (
            update(t)
            .where(t.c.id_hash == bindparam("h"), t.c.version == bindparam("v"))
            .values(payload=bindparam("p"))
        )

        async def work(connection: AsyncConnection) -> int:
            done = 0
            for id_hash, version, payload in rows:
                result = await connection.execute(
                    statement, {"h": id_hash, "v": version, "p": payload}
                )
                done += int(result.rowcount)
            return done

        return await self.run(work)

    async def delete_version(self, id_hash: str, version: int) -> bool:
        """Delete the row if it still has ``version`` (not if a request rewrote it)."""
        params = {"h": id_hash, "old_version": version}
        return await self._hot_rowcount("delete_version", params) == 1


def hash_lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    digest = hashlib.sha256(f"quartsess:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
