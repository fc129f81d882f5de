"""Per-request statements through SQLAlchemy: MariaDB/MySQL (an engine on its asyncio
driver), SQLite URLs that are not a plain file path (``:memory:``, ``file:`` URIs; on
a thread), and every database when the sessions use the app's own engine."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container, Mapping
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .connections import Connections
from .statements import CompiledStatement, Row

T = TypeVar("T")

logger = logging.getLogger("quartsess")


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


class SqlAlchemyRunner:
    """Runs the compiled statements' Core forms on connections of ``connections``."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._run = connections.run_statement

    @property
    def keep_open(self) -> bool:
        return self._connections.keep_open

    @keep_open.setter
    def keep_open(self, keep: bool) -> None:
        self._connections.keep_open = keep

    async def fetch_one(
        self, statement: CompiledStatement, params: Mapping[str, Any]
    ) -> Row | None:
        def work(connection: Connection) -> Row | None:
            row: Row | None = connection.execute(statement.statement, dict(params)).first()
            return row

        result: Row | None = await self._run(work)
        return result

    async def rowcount(self, statement: CompiledStatement, params: Mapping[str, Any]) -> int:
        def work(connection: Connection) -> int:
            return int(connection.execute(statement.statement, dict(params)).rowcount)

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
