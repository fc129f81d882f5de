"""The SQL store: the sessions table through SQLAlchemy Core, its per-request statements
through the fastest correct runner for the database, and maintenance (pruning,
statistics, key rotation) through SQLAlchemy."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from sqlalchemy import (
    MetaData,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    inspect,
    literal,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.sql import ColumnElement

from ..errors import (
    ConfigurationError,
    DatabaseMissing,
    SessionStoreUnavailable,
    TableMissing,
    TableOutdated,
    describe_error,
)
from ..schema import MYSQL_DIALECTS, build_table
from .base import StoredSession, StoreStats
from .connections import (
    Connections,
    ServerConnections,
    SqliteConnections,
    effective_connect_args,
    open_connections,
    postgresql_try_lock,
    run_locked_postgresql,
)
from .sql_url import (
    MAINTENANCE_CONNECTIONS,
    check_engine,
    check_sql_settings,
    postgresql_budget,
)
from .sqlalchemy_runner import (
    MYSQL_DEADLOCK,
    MYSQL_LOCK_WAIT_TIMEOUT,
    SqlAlchemyRunner,
    retry_rolled_back,
)
from .sqlite_runner import SQLITE_BUSY_TIMEOUT_MS, SqliteRunner
from .statements import CompiledStatement, Row, StatementRunner

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..config import SessionConfig

T = TypeVar("T")

# What the drivers and SQLAlchemy raise when the database cannot answer; the store turns
# each into SessionStoreUnavailable at its boundary (the runners do so themselves).
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, sqlite3.Error)
#: ID hashes per statement of :meth:`SqlStore.load_many` (well within every database's
#: limit on parameters).
LOAD_MANY_BATCH = 1000
#: The lease's columns (revision 0003), which only @exclusive routes read and write.
_LEASE_COLUMNS = ("lease_owner", "lease_until")
#: The columns of the sessions table, in the order of StoredSession's fields.
_COLUMNS = tuple(f.name for f in fields(StoredSession))
# Rows per DELETE of the pruner. On SQLite a batch holds the database's single write
# lock, which request writes of every worker then wait for, so it is kept short (~5 ms);
# server databases pay a commit per batch, so larger batches go faster.
_PRUNE_BATCH_SIZE = {"sqlite": 50}
_SERVER_PRUNE_BATCH_SIZE = 500
# SQLite: every deleted row dirties a random primary-key page, and the WAL checkpoints
# that follow hold up request writes. Measured (bench/prune.py): 200-row batches resting
# once their time pushed request p99 to ~0.5 s while pruning a million rows; on 300,000
# rows, 50-row batches resting twice their time kept it at 18 ms (3 ms without a
# prune), at ~4,100 rows/s.
_PRUNE_REST = {"sqlite": 2.0}
_SERVER_PRUNE_REST = 1.0


class SqlStore:
    """The sessions table in a SQL database (SQLite, PostgreSQL, MariaDB/MySQL).

    Per-request operations are one statement each, compiled once: on a SQLite file they
    run through ``sqlite3`` on the event loop (waiting on a thread only when another
    process holds the lock), on PostgreSQL through an asyncpg pool, elsewhere through
    SQLAlchemy. On PostgreSQL the worker's connections stay within
    ``pool_size + max_overflow``: two for maintenance, the rest for requests.

    With ``engine`` (an app's own ``AsyncEngine``; ``url`` and ``options`` are then its
    URL and nothing), every statement goes through that engine's pool, within the
    budget the app gave it, and the store never disposes it (see :meth:`from_engine`)."""

    def __init__(
        self,
        url: URL,
        table_name: str,
        options: Mapping[str, Any] | None = None,
        *,
        engine: AsyncEngine | None = None,
    ):
        options = dict(options or {})
        engine_options = dict(options)
        budget = postgresql_budget(options)
        asyncpg = url.get_backend_name() == "postgresql" and url.get_driver_name() == "asyncpg"
        if engine is not None:
            if options or url != engine.url:
                raise ValueError("with an engine, the store takes its URL and no options")
            self.connections: Connections = ServerConnections.sharing(engine.sync_engine)
        else:
            if asyncpg:
                engine_options.update(pool_size=1, max_overflow=MAINTENANCE_CONNECTIONS - 1)
            self.connections = open_connections(url, engine_options)
        self.dialect: Dialect = self.connections.dialect
        #: What this store turns into SessionStoreUnavailable. With asyncpg also its own
        #: errors: SQLAlchemy 2.0 lets some out of a failed connect unwrapped
        #: (sqlalchemy#11956), and none maps asyncpg's InternalClientError.
        self._driver_errors = _DRIVER_ERRORS
        if self.dialect.driver == "asyncpg":
            from .asyncpg_runner import asyncpg_errors

            self._driver_errors += asyncpg_errors()
        self.table: Table = build_table(MetaData(), table_name, dialect=self.dialect.name)
        self._ready = False
        self._missing_lease: list[str] = []
        self._hot = _hot_statements(self.table, self.dialect)
        #: Callables told the name of each per-request statement before it runs
        #: (``"load"``, ``"insert"``, ``"update"``, ``"touch"``, ``"delete"``, ``"load_many"``,
        #: ``"delete_version"``): for metrics, tracing, or tests that count round trips.
        self.statement_listeners: list[Callable[[str], None]] = []
        self._runner: StatementRunner = (
            SqlAlchemyRunner(self.connections)
            if engine is not None
            else self._choose_runner(url, options, asyncpg, budget)
        )
        self.keep_connections(False)

    @classmethod
    def from_url(cls, url: URL, table_name: str, options: Mapping[str, Any]) -> SqlStore:
        return cls(url, table_name, options)

    @classmethod
    def from_engine(cls, engine: AsyncEngine, table_name: str) -> SqlStore:
        """The store on an app's own ``AsyncEngine``: per-request statements and
        maintenance on connections of its pool (autocommit set per connection, the
        engine's own settings untouched), never disposed: ``close()`` leaves it open.
        Raises :class:`~quartsess.ConfigurationError` for an engine it cannot use."""
        check_engine(engine)
        return cls(engine.url, table_name, engine=engine)

    @classmethod
    def from_config(cls, config: SessionConfig) -> SqlStore:
        """The store an app's settings describe (``Session.store_class`` hook); raises
        :class:`~quartsess.ConfigurationError` for a database, driver, connection budget
        or engine it cannot serve."""
        if config.engine is not None:
            return cls.from_engine(config.engine, config.table)
        check_sql_settings(config.db_url, config.engine_options)
        try:
            return cls(config.db_url, config.table, config.engine_options)
        except (TypeError, ArgumentError) as error:
            # SQLAlchemy's refusal of an option it does not know for this driver and pool.
            if isinstance(error, TypeError) and not str(error).startswith("Invalid argument"):
                raise
            reason = str(error).split(".  ")[0]
            raise ConfigurationError("SESSION_ENGINE_OPTIONS", reason) from error

    def _choose_runner(
        self, url: URL, options: Mapping[str, Any], asyncpg: bool, budget: int
    ) -> StatementRunner:
        if url.get_backend_name() == "sqlite":  # sqlite3 itself, whatever driver is named
            database = url.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                connections = self.connections
                files = connections.files if isinstance(connections, SqliteConnections) else None
                return SqliteRunner(database, SQLITE_BUSY_TIMEOUT_MS, files)
        if asyncpg:
            from .asyncpg_runner import AsyncpgRunner, asyncpg_connect_kwargs

            _, url_kwargs = self.dialect.create_connect_args(url)
            connect = asyncpg_connect_kwargs(url_kwargs, effective_connect_args(url, options))
            return AsyncpgRunner(connect, max(budget - MAINTENANCE_CONNECTIONS, 1))
        return SqlAlchemyRunner(self.connections)

    @property
    def backend(self) -> str:
        name = self.dialect.name
        return "mysql" if name == "mariadb" else name

    @property
    def prune_batch_size(self) -> int:
        return _PRUNE_BATCH_SIZE.get(self.backend, _SERVER_PRUNE_BATCH_SIZE)

    @property
    def prune_rest(self) -> float:
        return _PRUNE_REST.get(self.backend, _SERVER_PRUNE_REST)

    @property
    def sync_engine(self) -> Engine:
        """The synchronous SQLAlchemy engine of maintenance work (for event listeners)."""
        return self.connections.sync_engine

    def describe(self) -> str:
        url = self.connections.url.render_as_string(hide_password=True)
        return f"table {self.table.name!r} in {url}"

    @property
    def writes_inline(self) -> bool:
        return isinstance(self._runner, SqliteRunner)

    def keep_connections(self, keep: bool) -> None:
        self._runner.keep_open = keep
        self.connections.keep_open = keep

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Call ``work`` with a SQLAlchemy connection (schema work and maintenance); it
        runs on a worker thread (SQLite) or in SQLAlchemy's async bridge. Raises only
        :class:`~quartsess.StoreError`."""
        try:
            return await self.connections.run(work)
        except self._driver_errors as error:
            self._unavailable(error)

    def _unavailable(self, error: BaseException) -> NoReturn:
        raise SessionStoreUnavailable(f"{self.dialect.name}: {describe_error(error)}") from error

    async def close(self) -> None:
        await self._runner.close()
        await self.connections.close()
        self._ready = False

    # -- schema ---------------------------------------------------------------------

    async def prepare(self, *, create_table: bool) -> None:
        if self._ready:
            return
        url = self.connections.url.render_as_string(hide_password=True)
        if create_table:
            await self.run(self._create_table)
        elif not await self.table_exists():
            raise TableMissing(self.table.name, url)
        missing = await self._missing_columns()
        # Only @exclusive routes use the lease (revision 0003): a table without it serves
        # every other request.
        self._missing_lease = [name for name in missing if name in _LEASE_COLUMNS]
        missing = [name for name in missing if name not in _LEASE_COLUMNS]
        if missing:
            raise TableOutdated(self.table.name, url, missing)
        self._ready = True

    async def _missing_columns(self) -> list[str]:
        def columns(connection: Connection) -> set[str]:
            return {c["name"] for c in inspect(connection).get_columns(self.table.name)}

        present = await self.run(columns)
        return [c.name for c in self.table.columns if c.name not in present]

    # -- leases (@exclusive) ------------------------------------------------------------

    async def take_lease(
        self, id_hash: str, *, version: int, owner: str, until: int, now: int
    ) -> bool:
        self._require_lease()
        params = {"h": id_hash, "old_version": version, "owner": owner, "until": until, "now": now}
        return await self._hot_rowcount("take_lease", params) == 1

    async def renew_lease(self, id_hash: str, *, owner: str, until: int) -> bool:
        self._require_lease()
        params = {"h": id_hash, "owner": owner, "until": until}
        return await self._hot_rowcount("renew_lease", params) == 1

    async def release_lease(self, id_hash: str, *, owner: str) -> None:
        self._require_lease()
        await self._hot_rowcount("release_lease", {"h": id_hash, "owner": owner})

    def _require_lease(self) -> None:
        if self._missing_lease:
            url = self.connections.url.render_as_string(hide_password=True)
            raise TableOutdated(self.table.name, url, self._missing_lease)

    def _create_table(self, connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Two workers creating the table at once collide in pg_type; serialize them.
            lock_key = hash_lock_key(self.table.name)
            run_locked_postgresql(connection, lock_key, lambda: self._create_missing(connection))
            return
        try:
            self._create_missing(connection)
        except DBAPIError:
            # Another worker created it between our check and our CREATE.
            if not self._table_exists(connection):
                raise

    def _create_missing(self, connection: Connection) -> None:
        self.table.metadata.create_all(connection, tables=[self.table], checkfirst=True)

    def _table_exists(self, connection: Connection) -> bool:
        return inspect(connection).has_table(self.table.name)

    # -- rows ---------------------------------------------------------------------

    async def load(self, id_hash: str) -> StoredSession | None:
        row = await self._fetch_one("load", {"h": id_hash})
        if row is None:
            return None
        # The load statement selects every column but id_hash and client, in order.
        return StoredSession(id_hash, bytes(row[0]), *row[1:])

    async def insert(self, row: StoredSession) -> None:
        await self._hot_rowcount("insert", {name: getattr(row, name) for name in _COLUMNS})

    async def update(self, row: StoredSession, *, previous: StoredSession) -> bool:
        # An indexed column that is set is rewritten in its index even when its value is
        # the same (SQLite; on PostgreSQL it rules out a heap-only update): the statement
        # names only the ones that change. Usually only the payload does.
        params = {
            "h": row.id_hash,
            "old_version": previous.version,
            "new_version": row.version,
            "new_payload": row.payload,
            "new_touched": row.touched_at,
            "new_expires": row.expires_at,
            "new_handle": row.handle,
            "new_user": row.user_hash,
            "new_client": row.client,
        }
        owner = row.handle != previous.handle or row.user_hash != previous.user_hash
        times = row.expires_at != previous.expires_at or row.touched_at != previous.touched_at
        return await self._hot_rowcount("update", params, _UPDATES[owner, times]) == 1

    async def touch(
        self, id_hash: str, *, touched_at: int, expires_at: int, client: bytes | None
    ) -> bool:
        params = {
            "h": id_hash,
            "new_touched": touched_at,
            "new_expires": expires_at,
            "new_client": client,
        }
        return await self._hot_rowcount("touch", params) == 1

    async def delete(self, id_hash: str) -> bool:
        return await self._hot_rowcount("delete", {"h": id_hash}) == 1

    async def delete_version(self, id_hash: str, version: int) -> bool:
        """Delete the row if it still has ``version`` (not if a request rewrote it)."""
        params = {"h": id_hash, "old_version": version}
        return await self._hot_rowcount("delete_version", params) == 1

    async def _fetch_one(self, name: str, params: dict[str, Any]) -> Row | None:
        for listener in self.statement_listeners:
            listener(name)
        try:
            return await self._runner.fetch_one(self._hot[name], params)
        except self._driver_errors as error:
            self._unavailable(error)

    async def _hot_rowcount(
        self, name: str, params: dict[str, Any], variant: str | None = None
    ) -> int:
        """Run the statement ``variant`` (default: ``name``); listeners are told ``name``."""
        for listener in self.statement_listeners:
            listener(name)
        try:
            return await self._runner.rowcount(self._hot[variant or name], params)
        except self._driver_errors as error:
            self._unavailable(error)

    # -- maintenance: pruning, statistics, key rotation ------------------------------

    async def table_exists(self) -> bool:
        """Whether the sessions table exists (a SQLite file is created if missing)."""
        return await self.run(self._table_exists)

    async def check_table(self) -> None:
        url = self.connections.url
        if self._sqlite_file_missing():  # asking would create the file
            raise DatabaseMissing(self.table.name, url.database or "")
        if not await self.table_exists():
            raise TableMissing(self.table.name, url.render_as_string(hide_password=True))

    def _sqlite_file_missing(self) -> bool:
        database = self.connections.url.database
        if self.dialect.name != "sqlite" or not database or database == ":memory:":
            return False
        return not database.startswith("file:") and not os.path.exists(database)

    async def delete_expired(self, now: int, limit: int) -> int:
        """Delete at most ``limit`` rows whose deadline ``expires_at`` is at or before
        ``now``, oldest first, in one statement on the indexed column; returns how many.

        Safe to run from several processes at once: PostgreSQL skips rows another pruner
        has locked, MariaDB/MySQL lock in index order, SQLite serializes writers."""
        dialect = self.dialect
        t = self.table
        statement: Any
        if dialect.name in MYSQL_DIALECTS:
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

        def work(connection: Connection) -> int:
            return int(connection.execute(statement, {"now": now}).rowcount)

        # InnoDB may pick a batch as a deadlock victim against a request's write; the
        # batch was rolled back whole, so running it again is safe. (The retry sees the
        # driver's error; it becomes SessionStoreUnavailable only after the last try.)
        try:
            return await retry_rolled_back(
                lambda: self.connections.run(work), (MYSQL_DEADLOCK, MYSQL_LOCK_WAIT_TIMEOUT)
            )
        except self._driver_errors as error:
            self._unavailable(error)

    @asynccontextmanager
    async def try_lock(self, name: str) -> AsyncIterator[bool]:
        """Hold a cluster-wide lock called ``name`` for the block if nobody else holds it
        (see :meth:`_try_lock`)."""
        try:
            async with self._try_lock(name) as acquired:
                yield acquired
        except self._driver_errors as error:
            self._unavailable(error)

    @asynccontextmanager
    async def _try_lock(self, name: str) -> AsyncIterator[bool]:
        """Hold a cluster-wide lock called ``name`` for the block if nobody else holds it.

        On PostgreSQL a transaction-scoped advisory lock (``pg_try_advisory_xact_lock``)
        in a transaction kept open for the block (so it holds through a transaction
        pooler too), on MariaDB/MySQL a named lock (``GET_LOCK``) on a connection kept
        for the block and released on that same connection; yields whether it was
        acquired. SQLite has no such lock
        (its writers are serialized anyway); this yields True and callers must be correct
        when run concurrently."""
        dialect = self.dialect.name
        connections = self.connections
        key: int | str
        if not isinstance(connections, ServerConnections):
            yield True
            return
        if dialect == "postgresql":
            async with postgresql_try_lock(
                connections, hash_lock_key(f"{name}:{self.table.name}")
            ) as acquired:
                yield acquired
            return
        if dialect in MYSQL_DIALECTS:
            key = f"quartsess:{hash_lock_key(f'{name}:{self.table.name}')}"  # <= 64 chars
            take, give = "SELECT GET_LOCK(:k, 0)", "SELECT RELEASE_LOCK(:k)"
        else:
            yield True
            return

        def take_lock(connection: Connection) -> bool:
            return bool(connection.execute(text(take), {"k": key}).scalar() == 1)

        def give_lock(connection: Connection) -> None:
            connection.execute(text(give), {"k": key})

        async with connections.pooled() as connection:
            if not await connections.call(take_lock, connection):
                yield False
                return
            try:
                yield True
            finally:
                try:
                    await connections.call(give_lock, connection)
                except BaseException:
                    # Never hand a connection that may still hold the lock back to the
                    # pool: closing it releases the lock on the server.
                    await connections.call(connection.invalidate)
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

        def work(connection: Connection) -> StoreStats:
            row = connection.execute(query).one()
            return StoreStats(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

        return await self.run(work)

    async def scan(self, after: str, limit: int) -> list[StoredSession]:
        """Up to ``limit`` rows whose id_hash sorts after ``after`` (use ``""`` to
        start), in id_hash order: walks the whole table in batches without holding
        anything between them."""
        t = self.table
        query = select(*_row_columns(t)).where(t.c.id_hash > after).order_by(t.c.id_hash)
        query = query.limit(limit)
        return await self._rows(query)

    async def replace_payloads(self, rows: Sequence[StoredSession]) -> int:
        """Meant for re-encrypting unchanged content (key rotation): the version is kept,
        so a request holding the row still saves normally, and a row that a request
        changed in the meantime is left alone."""
        t = self.table
        statement = (
            update(t)
            .where(t.c.id_hash == bindparam("h"), t.c.version == bindparam("v"))
            .values(payload=bindparam("p"), user_hash=bindparam("u"), client=bindparam("c"))
        )

        def work(connection: Connection) -> int:
            done = 0
            for row in rows:
                params = {
                    "h": row.id_hash,
                    "v": row.version,
                    "p": row.payload,
                    "u": row.user_hash,
                    "c": row.client,
                }
                done += int(connection.execute(statement, params).rowcount)
            return done

        return await self.run(work)

    # -- user sessions ----------------------------------------------------------------

    async def load_many(self, id_hashes: Sequence[str]) -> list[StoredSession]:
        """One ``SELECT ... WHERE id_hash IN (...)`` per ``LOAD_MANY_BATCH`` hashes
        (parameter limits), through the maintenance connections."""
        for listener in self.statement_listeners:
            listener("load_many")
        t = self.table
        columns = [c for c in _row_columns(t) if c.name not in ("payload", "client")]
        found: list[StoredSession] = []
        keys = list(dict.fromkeys(id_hashes))
        for start in range(0, len(keys), LOAD_MANY_BATCH):
            batch = keys[start : start + LOAD_MANY_BATCH]
            query = select(*columns, literal(b"").label("payload")).where(t.c.id_hash.in_(batch))
            found += await self._rows(query)
        return found

    async def sessions_of(self, user_hashes: Sequence[str]) -> list[StoredSession]:
        t = self.table
        query = select(*_row_columns(t)).where(t.c.user_hash.in_(list(user_hashes)))
        return await self._rows(query)

    async def delete_handles(
        self, handles: Sequence[str], *, user_hashes: Sequence[str] | None = None
    ) -> list[StoredSession]:
        if not handles:
            return []
        t = self.table
        condition: ColumnElement[bool] = t.c.handle.in_(list(handles))
        if user_hashes is not None:
            condition = and_(condition, t.c.user_hash.in_(list(user_hashes)))
        return await self._delete_returning(condition)

    async def delete_user(
        self, user_hashes: Sequence[str], *, except_handle: str | None = None
    ) -> list[StoredSession]:
        t = self.table
        condition: ColumnElement[bool] = t.c.user_hash.in_(list(user_hashes))
        if except_handle is not None:
            condition = and_(condition, or_(t.c.handle.is_(None), t.c.handle != except_handle))
        return await self._delete_returning(condition)

    async def _delete_returning(self, condition: Any) -> list[StoredSession]:
        """Delete the rows matching ``condition`` and return them (without clients): with
        ``DELETE ... RETURNING`` where the database has it, otherwise (MySQL) by locking
        them and deleting them in one transaction. Either way, of two processes deleting
        the same rows at once, each row is returned to one."""
        t = self.table
        columns = [c for c in _row_columns(t) if c.name != "client"]

        def work(connection: Connection) -> list[StoredSession]:
            if connection.dialect.delete_returning:
                deleted = connection.execute(delete(t).where(condition).returning(*columns))
                return [_stored(row._mapping) for row in deleted]
            connection.execution_options(isolation_level="READ COMMITTED")
            with connection.begin():
                locked = select(*columns).where(condition).with_for_update()
                rows = [_stored(row._mapping) for row in connection.execute(locked)]
                if rows:
                    keys = [row.id_hash for row in rows]
                    connection.execute(delete(t).where(t.c.id_hash.in_(keys)))
            return rows

        return await self.run(work)

    async def _rows(self, query: Any) -> list[StoredSession]:
        def work(connection: Connection) -> list[StoredSession]:
            return [_stored(row._mapping) for row in connection.execute(query)]

        return await self.run(work)


def _row_columns(t: Table) -> list[Any]:
    """The columns a :class:`StoredSession` holds (not the lease's, which a table still at
    revision 0002 lacks)."""
    return [t.c[name] for name in _COLUMNS]


def _stored(row: Mapping[Any, Any]) -> StoredSession:
    """A row as the store returns it: binary columns as bytes, times as int."""
    client = row.get("client")
    return StoredSession(
        id_hash=row["id_hash"],
        payload=bytes(row["payload"]),
        version=int(row["version"]),
        created_at=int(row["created_at"]),
        touched_at=int(row["touched_at"]),
        expires_at=int(row["expires_at"]),
        handle=row["handle"],
        user_hash=row["user_hash"],
        client=None if client is None else bytes(client),
    )


#: Each column an update may set, and its parameter.
_UPDATE_PARAMS = {
    "payload": "new_payload",
    "version": "new_version",
    "touched_at": "new_touched",
    "expires_at": "new_expires",
    "handle": "new_handle",
    "user_hash": "new_user",
    "client": "new_client",
}
#: The update statement by (handle or user changed, times changed).
_UPDATES = {
    (True, True): "update",
    (True, False): "update_owner",
    (False, True): "update_times",
    (False, False): "update_payload",
}


def _hot_statements(t: Table, dialect: Any) -> dict[str, CompiledStatement]:
    by_id = t.c.id_hash == bindparam("h")
    by_id_and_version = (by_id, t.c.version == bindparam("old_version"))

    def update_setting(*columns: str) -> CompiledStatement:
        """An update of the payload, version and client, and of ``columns``."""
        values: dict[str, Any] = {
            column: bindparam(name)
            for column, name in _UPDATE_PARAMS.items()
            if column in ("payload", "version", "client", *columns)
        }
        return CompiledStatement(update(t).where(*by_id_and_version).values(values), dialect)

    return {
        "load": CompiledStatement(
            select(
                t.c.payload,
                t.c.version,
                t.c.created_at,
                t.c.touched_at,
                t.c.expires_at,
                t.c.handle,
                t.c.user_hash,
            ).where(by_id),
            dialect,
        ),
        "insert": CompiledStatement(insert(t), dialect, list(_COLUMNS)),
        "update": update_setting("touched_at", "expires_at", "handle", "user_hash"),
        "update_owner": update_setting("handle", "user_hash"),
        "update_times": update_setting("touched_at", "expires_at"),
        "update_payload": update_setting(),
        "touch": CompiledStatement(
            update(t)
            .where(by_id, *_commit_without_flush(dialect))
            .values(
                touched_at=bindparam("new_touched"),
                expires_at=bindparam("new_expires"),
                client=bindparam("new_client"),
            ),
            dialect,
        ),
        "delete": CompiledStatement(delete(t).where(by_id), dialect),
        "delete_version": CompiledStatement(delete(t).where(*by_id_and_version), dialect),
        # The lease of an @exclusive route: taken only while free (or expired) and only
        # on the version the request loaded, so the holder works on the current content.
        "take_lease": CompiledStatement(
            update(t)
            .where(
                *by_id_and_version,
                or_(t.c.lease_until.is_(None), t.c.lease_until <= bindparam("now")),
            )
            .values(lease_owner=bindparam("owner"), lease_until=bindparam("until")),
            dialect,
        ),
        "renew_lease": CompiledStatement(
            update(t)
            .where(by_id, t.c.lease_owner == bindparam("owner"))
            .values(lease_until=bindparam("until")),
            dialect,
        ),
        "release_lease": CompiledStatement(
            update(t)
            .where(by_id, t.c.lease_owner == bindparam("owner"))
            .values(lease_owner=null(), lease_until=null()),
            dialect,
        ),
    }


def _commit_without_flush(dialect: Any) -> list[Any]:
    """On PostgreSQL, a condition that makes the statement's own transaction commit
    without waiting for the WAL flush (``synchronous_commit`` off for that transaction
    only: ``set_config(..., true)`` ends with it, so nothing leaks to the connection's
    next statement).

    Only the touch uses it: it only moves an idle deadline (and the last-seen client),
    so a database crash can lose at most one touch interval of it, while a content
    write that the user was told about is never lost. It halves a touch's latency."""
    if dialect.name != "postgresql":
        return []
    return [text("set_config('synchronous_commit', 'off', true) = 'off'")]


def hash_lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    digest = hashlib.sha256(f"quartsess:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
