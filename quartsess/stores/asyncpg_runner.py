"""Per-request statements on PostgreSQL through asyncpg, with a minimal pool of our own."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from ..errors import SessionStoreUnavailable
from .statements import CompiledStatement, Row

# SQLAlchemy's asyncpg dialect options (in connect_args), not asyncpg.connect() arguments.
_SQLALCHEMY_ONLY_KEYS = frozenset({"prepared_statement_cache_size", "prepared_statement_name_func"})

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
    Connections only run the six autocommit statements and never change session
    state, so none needs a reset. One that failed or was interrupted in the middle of a
    statement is terminated, never reused.

    Statements are unnamed and sent again with each execution (Parse, Bind, Execute and
    Sync in one message: still one round trip), so nothing is left on the server between
    two statements. That is what makes them work through a pooler in transaction mode
    (PgBouncer, managed poolers), which hands each statement to whichever server
    connection is free: asyncpg's named, cached statements there fail with
    ``prepared statement "__asyncpg_stmt_N__" already exists`` / ``does not exist``, or
    could even run another client's statement of the same name. Re-parsing costs the
    server some 40 us per statement; an app that connects to PostgreSQL directly can
    opt back into asyncpg's named statements with ``connect_args={"statement_cache_size":
    100}`` in ``SESSION_ENGINE_OPTIONS``."""

    def __init__(self, connect_kwargs: Mapping[str, Any], max_size: int) -> None:
        # asyncpg re-sends unnamed statements with each execution only with its own
        # statement cache off; the cache holds named ones (see the class docstring).
        self._connect_kwargs = {"statement_cache_size": 0, **connect_kwargs}
        kwargs = self._connect_kwargs
        self._named_statements = int(kwargs["statement_cache_size"]) > 0
        self._acquire_timeout = float(kwargs.get("timeout", 5))
        #: Keep connections open between statements (while the app serves); otherwise
        #: each is closed after its statement, so nothing is left for the garbage collector.
        self.keep_open = True
        # A per-request statement is one row by its key: milliseconds on a live server.
        # Bounded like the connect (not by command_timeout, 30 s, meant for maintenance),
        # so a partition, where no connection reset ever arrives, gives a 503 within
        # seconds instead of requests hanging until the network comes back.
        command_timeout = kwargs.get("command_timeout")
        self._statement_timeout = min(
            self._acquire_timeout, float(command_timeout or self._acquire_timeout)
        )
        self._max_size = max_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[Any] = []  # connections ready for use, most recently used last
        # Every open connection of this loop, with its prepared statements by SQL text
        # (their parameter and result types, described once per connection).
        self._members: dict[Any, dict[str, Any]] = {}
        self._slots = 0  # connections open or being opened (at most max_size)
        # Requests waiting for a connection; each gets one, or None: "a slot is yours,
        # open a connection in it".
        self._waiters: deque[asyncio.Future[Any]] = deque()
        # Bumped by close() and loop changes: a connection opened for an older generation
        # is not this pool's (its slot was already forgotten), so it is terminated.
        self._generation = 0
        import asyncpg  # type: ignore[import-untyped]

        self._errors = asyncpg_errors()
        self._server_errors: tuple[type[BaseException], ...] = (asyncpg.PostgresError,)
        # Also PostgresErrors, but the connection is gone.
        self._lost: tuple[type[BaseException], ...] = (asyncpg.PostgresConnectionError,)

    async def fetch_one(
        self, statement: CompiledStatement, params: Mapping[str, Any]
    ) -> Row | None:
        row, _ = await self._call(statement, params, one_row=True)
        return None if row is None else tuple(row)

    async def rowcount(self, statement: CompiledStatement, params: Mapping[str, Any]) -> int:
        _, status = await self._call(statement, params, one_row=False)
        return int(str(status).rsplit(" ", 1)[-1])

    async def _call(
        self, statement: CompiledStatement, params: Mapping[str, Any], *, one_row: bool
    ) -> tuple[Any, str | None]:
        """Run ``statement`` on a pooled connection: (its first row or all rows, its
        command status such as ``UPDATE 1``)."""
        connection = await self._acquire()
        try:
            arguments = statement.arguments(params)
            timeout = self._statement_timeout
            if self._named_statements:  # asyncpg's own cache (direct connections only)
                sql, status = statement.sql, None
                if one_row:
                    result = await connection.fetchrow(sql, *arguments, timeout=timeout)
                else:
                    result = None
                    status = await connection.execute(sql, *arguments, timeout=timeout)
            else:
                prepared = await self._prepared(connection, statement.sql)
                if one_row:
                    result = await prepared.fetchrow(*arguments, timeout=timeout)
                else:
                    result = await prepared.fetch(*arguments, timeout=timeout)
                status = prepared.get_statusmsg()
        except BaseException as error:
            replacement = self._failed(connection, error)
            if replacement is None:
                raise
            raise replacement from error
        if self.keep_open or self._waiters:
            self._release(connection)
        else:
            self._members.pop(connection, None)
            self._free_slot()
            try:
                await connection.close(timeout=self._acquire_timeout)
            except self._errors:
                connection.terminate()
        return result, status

    async def _prepared(self, connection: Any, sql: str) -> Any:
        """``sql`` as an unnamed statement of ``connection``, described once."""
        statements = self._members.get(connection)
        prepared = None if statements is None else statements.get(sql)
        if prepared is None:
            prepared = await connection.prepare(sql, name="", timeout=self._statement_timeout)
            if statements is not None:
                statements[sql] = prepared
        return prepared

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
            self._members.pop(connection, None)
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
                raise SessionStoreUnavailable(
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
                raise SessionStoreUnavailable(
                    f"PostgreSQL: {type(error).__name__}: {error}"
                ) from error
            raise
        if generation != self._generation:  # the pool was closed while we connected
            connection.terminate()
            raise SessionStoreUnavailable("PostgreSQL: the session store was closed")
        self._members[connection] = {}
        return connection

    def _release(self, connection: Any) -> None:
        if connection not in self._members:  # opened before close() or on another loop
            connection.terminate()
            return
        if connection.is_closed():
            self._members.pop(connection, None)
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

    def _failed(self, connection: Any, error: BaseException) -> SessionStoreUnavailable | None:
        """Release ``connection`` after ``error``; returns the SessionStoreUnavailable to raise
        instead, or None to let ``error`` (a cancellation, say) through."""
        if isinstance(error, self._server_errors) and not isinstance(error, self._lost):
            # The server refused the statement; the connection is fine.
            self._release(connection)
            return SessionStoreUnavailable(f"PostgreSQL: {type(error).__name__}: {error}")
        # Broken, timed out or cancelled mid-statement: its state is unknown.
        connection.terminate()
        if connection in self._members:
            del self._members[connection]
            self._free_slot()
        if isinstance(error, self._errors):
            return SessionStoreUnavailable(f"PostgreSQL: {type(error).__name__}: {error}")
        return None

    def _forget_all(self) -> None:
        # Connections of a loop that is gone cannot even be closed from here; they
        # are dropped (the server ends them when their sockets close).
        self._generation += 1
        self._idle = []
        self._members = {}
        self._slots = 0
        self._waiters = deque()

    async def close(self) -> None:
        idle, loop, waiters = self._idle, self._loop, self._waiters
        self._forget_all()
        for waiter in waiters:  # requests waiting for a connection fail now, not later
            if not waiter.done():
                waiter.set_exception(
                    SessionStoreUnavailable("PostgreSQL: the session store was closed")
                )
        self._loop = None
        if loop is not asyncio.get_running_loop():
            return
        for connection in idle:
            try:
                await connection.close(timeout=self._acquire_timeout)
            except self._errors:
                connection.terminate()


def asyncpg_connect_kwargs(
    url_kwargs: Mapping[str, Any], connect_args: Mapping[str, Any]
) -> dict[str, Any]:
    """``asyncpg.connect()`` arguments from SQLAlchemy's translation of the URL and the
    app's ``connect_args``."""
    kwargs = {k: v for k, v in url_kwargs.items() if k in _ASYNCPG_CONNECT_KEYS}
    kwargs.update((k, v) for k, v in connect_args.items() if k not in _SQLALCHEMY_ONLY_KEYS)
    return kwargs


def asyncpg_errors() -> tuple[type[BaseException], ...]:
    """What asyncpg raises when the database cannot answer (all become SessionStoreUnavailable)."""
    import asyncpg

    return (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    )
