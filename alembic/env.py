"""Alembic environment for quartsess's sessions table, run through an async driver.

The database URL and table name are found the way the sample app finds them:

- URL: ``-x url=...``, else ``QUARTSESS_DB_URL``, else ``SESSION_DB_URL``, else the
  SQLite file ``quartsess.sqlite3`` in ``QUARTSESS_INSTANCE_PATH`` (default ``instance/``
  beside this directory), which is where the app keeps it by default. A SQLite URL may
  name any driver the app accepts (``sqlite://``, ``sqlite+pysqlite://``): the file is
  migrated through aiosqlite.
- Table: ``-x table=...``, else ``QUARTSESS_TABLE``, else ``SESSION_TABLE``, else
  ``quart_sessions``.

Revisions are recorded in ``<table>_alembic_version``. Called programmatically with a
sync ``Connection`` in ``config.attributes["connection"]``, it migrates on that connection.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import MetaData, Table, pool
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from quartsess.config import DEFAULT_SQLITE_FILE, DEFAULT_TABLE
from quartsess.schema import build_table
from quartsess.stores.sql_url import unsupported_url_problem

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

_x = context.get_x_argument(as_dictionary=True)
_here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setting(x_name: str, *variables: str) -> str | None:
    value = _x.get(x_name) or config.attributes.get(f"quartsess_{x_name}")
    for variable in variables:
        value = value or os.environ.get(variable)
    return value or None


def database_url() -> URL:
    raw = _setting("url", "QUARTSESS_DB_URL", "SESSION_DB_URL")
    if raw is None:
        instance = os.environ.get("QUARTSESS_INSTANCE_PATH") or os.path.join(_here, "instance")
        path = os.path.join(os.path.abspath(instance), DEFAULT_SQLITE_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return URL.create("sqlite+aiosqlite", database=path)
    url = make_url(raw)
    problem = unsupported_url_problem(url)
    if problem is not None:
        raise SystemExit(
            f"quartsess's migrations run through an async driver, like the app: {problem} "
            f"(got {url.render_as_string(hide_password=True)})"
        )
    if url.get_backend_name() == "sqlite" and url.get_driver_name() != "aiosqlite":
        # The app serves SQLite with the standard library's sqlite3 whatever driver the
        # URL names (sqlite://, sqlite+pysqlite://); the same file, through aiosqlite here.
        url = url.set(drivername="sqlite+aiosqlite")
    return url


def table_name() -> str:
    name = _setting("table", "QUARTSESS_TABLE", "SESSION_TABLE") or DEFAULT_TABLE
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"table name {name!r}: use letters, digits and underscores only")
    return name


TABLE = table_name()
config.attributes["quartsess_table"] = TABLE
target_metadata = MetaData()
build_table(target_metadata, TABLE)


def _only_our_table(name: str | None, type_: str, parent_names: Any) -> bool:
    # Autogenerate must never propose dropping the other tables of a shared database.
    return type_ != "table" or name == TABLE


def _options() -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "version_table": f"{TABLE}_alembic_version",
        "include_name": _only_our_table,
        "compare_type": True,
    }


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, **_options())
    with context.begin_transaction():
        context.run_migrations()
        _drop_version_table_at_base(connection)


def _drop_version_table_at_base(connection: Connection) -> None:
    """With no revision recorded (``downgrade base``, ``stamp base``, or a ``check`` of
    an empty database, for which Alembic creates it), drop ``<table>_alembic_version``:
    at base nothing of quartsess's is left in the database. Read-only commands
    (``current``) leave it alone."""
    migration = context.get_context()
    if migration.opts.get("dont_mutate") or migration.get_current_heads():
        return
    Table(_options()["version_table"], MetaData()).drop(connection, checkfirst=True)


async def run_async_migrations() -> None:
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
