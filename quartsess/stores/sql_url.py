"""The SQL store's own settings policy: which databases and drivers it serves, that the
driver is installed, and each worker's PostgreSQL connection budget; or, with an app's
own engine, that the engine is one it can use. Checked when the store is built from the
app's settings (:meth:`SqlStore.from_config`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL
from sqlalchemy.pool import AssertionPool, Pool, QueuePool, SingletonThreadPool, StaticPool

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

# backend -> (drivers quartsess serves it with, how to install the first). SQLite is served
# by the standard library's sqlite3 whatever the URL names, so its synchronous URLs
# (sqlite://, sqlite+pysqlite://) are as good as sqlite+aiosqlite://; elsewhere the
# per-request statements need the async driver.
_DRIVERS_BY_BACKEND = {
    "sqlite": (("aiosqlite", "pysqlite"), "pip install quartsess"),
    "postgresql": (("asyncpg",), "pip install 'quartsess[postgresql]'"),
    "mysql": (("asyncmy", "aiomysql"), "pip install 'quartsess[mysql]'"),
    "mariadb": (("asyncmy", "aiomysql"), "pip install 'quartsess[mysql]'"),
}

# The driver SQLAlchemy picks for a URL that names none, where quartsess serves it.
_DEFAULT_DRIVERS = {"sqlite": "pysqlite"}


def unsupported_url_problem(url: URL) -> str | None:
    """What is wrong with ``url`` for quartsess (an unsupported database, or not one of its
    async drivers) and what to write instead; ``None`` when it is usable."""
    backend = url.get_backend_name()
    if backend not in _DRIVERS_BY_BACKEND:
        return f"database {backend!r} is not supported; use sqlite, postgresql, mysql or mariadb"
    drivers, install = _DRIVERS_BY_BACKEND[backend]
    driver = url.drivername.partition("+")[2] or _DEFAULT_DRIVERS.get(backend)
    if driver in drivers:
        return None
    if backend == "sqlite":
        return (
            f"the driver {driver!r} is not supported: SQLite is served by the standard "
            "library's sqlite3; write sqlite:///path (or sqlite+aiosqlite:///path)"
        )
    return (
        f"{backend} needs an async driver: write {backend}+{drivers[0]}://... "
        f"(install it with: {install})"
    )


#: Connections of a worker's budget on a database server kept for maintenance: the
#: pruner holds one for its lock and deletes on another. Requests need at least one more.
MAINTENANCE_CONNECTIONS = 2
_MIN_BUDGET = MAINTENANCE_CONNECTIONS + 1


def postgresql_budget(options: Mapping[str, Any]) -> int:
    """The PostgreSQL connections one worker may hold: ``pool_size + max_overflow`` of
    ``SESSION_ENGINE_OPTIONS`` (SQLAlchemy's defaults: 5 + 10)."""
    return int(options.get("pool_size", 5)) + int(options.get("max_overflow", 10))


def check_connection_budget(url: URL, options: Mapping[str, Any]) -> None:
    if url.get_backend_name() != "postgresql":
        return
    try:
        budget = postgresql_budget(options)
    except (TypeError, ValueError):
        raise ConfigurationError(
            "SESSION_ENGINE_OPTIONS", "pool_size and max_overflow must be whole numbers"
        ) from None
    if budget < _MIN_BUDGET:
        raise ConfigurationError(
            "SESSION_ENGINE_OPTIONS",
            f"pool_size + max_overflow ({budget}) is each worker's PostgreSQL connection "
            f"budget: {MAINTENANCE_CONNECTIONS} for pruning and maintenance, the rest for "
            f"requests; it must be at "
            f"least {_MIN_BUDGET}",
        )


def check_driver_installed(url: URL) -> None:
    """Import the URL's driver now, so a missing one fails at start-up. (On SQLite the
    store uses only the standard library's ``sqlite3``, whatever driver the URL names.)"""
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite+pysqlite")
    try:
        url.get_dialect().import_dbapi()
    except ImportError:
        _, install = _DRIVERS_BY_BACKEND[url.get_backend_name()]
        raise ConfigurationError(
            "SESSION_DB_URL",
            f"the driver {url.get_driver_name()!r} is not installed; {install}",
        ) from None


def check_sql_settings(url: URL, options: Mapping[str, Any]) -> None:
    """Raise :class:`~quartsess.ConfigurationError` naming the setting to fix when the
    SQL store cannot serve ``SESSION_DB_URL`` with ``SESSION_ENGINE_OPTIONS``."""
    problem = unsupported_url_problem(url)
    if problem is not None:
        raise ConfigurationError("SESSION_DB_URL", problem)
    check_connection_budget(url, options)
    check_driver_installed(url)


def pool_budget(pool: Pool) -> int | None:
    """The connections ``pool`` holds at most: ``pool_size + max_overflow``, 1 for the
    pools of one connection (``StaticPool`` and the like), ``None`` when it sets no
    limit (``NullPool``, ``max_overflow=-1``, a pool class of the app's own)."""
    if isinstance(pool, StaticPool | SingletonThreadPool | AssertionPool):
        return 1
    if not isinstance(pool, QueuePool):
        return None
    overflow = int(getattr(pool, "_max_overflow", 0))
    return None if overflow < 0 else pool.size() + overflow


def check_engine(engine: AsyncEngine) -> None:
    """Raise :class:`~quartsess.ConfigurationError` unless the SQL store can keep the
    sessions through the app's ``engine``: a database and async driver quartsess
    serves, and a pool that leaves room for requests beside maintenance."""
    problem = unsupported_url_problem(engine.url)
    if problem is not None:
        raise ConfigurationError("engine", problem)
    budget = pool_budget(engine.sync_engine.pool)
    if engine.url.get_backend_name() != "sqlite" and budget is not None and budget < _MIN_BUDGET:
        raise ConfigurationError(
            "engine",
            f"its pool holds at most {budget} connection{'s' if budget != 1 else ''} "
            "(pool_size + max_overflow); "
            f"the sessions' pruner holds {MAINTENANCE_CONNECTIONS} at times and "
            f"requests need one more: give it at least {_MIN_BUDGET}",
        )
