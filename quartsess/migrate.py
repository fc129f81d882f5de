"""``quart sessions migrate``: the Alembic revisions shipped in the wheel, run through
Alembic's API on the app's own database (``SESSION_DB_URL``, ``SESSION_ENGINE_OPTIONS``,
or a twin of the engine passed to ``Session(app, engine=...)``) and table
(``SESSION_TABLE``).

The revisions are the repository's ``alembic/`` folder (``env.py``, ``versions/``), which
the wheel ships as ``quartsess/_migrations``; a source checkout uses the folder itself.
Alembic is an optional extra (``pip install 'quartsess[alembic]'``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import click
from quart.cli import ScriptInfo, pass_script_info
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import SQLAlchemyError

from .cli_app import load_parts
from .config import SessionConfig
from .stores.connections import effective_connect_args

if TYPE_CHECKING:
    from alembic.config import Config

INSTALL_ALEMBIC = "pip install 'quartsess[alembic]'"

_PACKAGE = Path(__file__).resolve().parent
# In an installed wheel, then in a source checkout (an editable install maps
# quartsess._migrations onto alembic/, but cannot import a folder without __init__.py).
_SCRIPT_LOCATIONS = (_PACKAGE / "_migrations", _PACKAGE.parent / "alembic")


def script_location() -> Path:
    """The folder holding quartsess's ``env.py`` and ``versions/``."""
    for folder in _SCRIPT_LOCATIONS:
        if (folder / "env.py").is_file() and (folder / "versions").is_dir():
            return folder
    raise click.ClickException(
        "quartsess's migrations are missing from this installation (looked in "
        + ", ".join(str(folder) for folder in _SCRIPT_LOCATIONS)
        + "); reinstall quartsess"
    )


@click.group("migrate", invoke_without_command=True)
@click.pass_context
def migrate_cli(context: click.Context) -> None:
    """Create or upgrade the sessions table with quartsess's Alembic migrations.

    Without a subcommand, the same as "upgrade head". Runs against the app's
    SESSION_DB_URL and SESSION_TABLE; revisions are recorded in <table>_alembic_version,
    apart from the app's own Alembic history."""
    if context.invoked_subcommand is None:
        context.invoke(upgrade_command)


@migrate_cli.command("upgrade")
@click.argument("revision", default="head")
@pass_script_info
def upgrade_command(info: ScriptInfo, revision: str) -> None:
    """Upgrade the sessions table to REVISION (default: head)."""
    command = _alembic_command()

    def upgrade(config: Config) -> None:
        command.upgrade(config, revision)

    _run(info, upgrade)
    _echo_current(info)


@migrate_cli.command("downgrade")
@click.argument("revision")
@pass_script_info
def downgrade_command(info: ScriptInfo, revision: str) -> None:
    """Downgrade the sessions table to REVISION ("base" drops the table)."""
    command = _alembic_command()

    def downgrade(config: Config) -> None:
        command.downgrade(config, revision)

    _run(info, downgrade)
    _echo_current(info)


@migrate_cli.command("stamp")
@click.argument("revision")
@pass_script_info
def stamp_command(info: ScriptInfo, revision: str) -> None:
    """Record REVISION as applied without running it (e.g. "stamp head" once for a
    table the app created itself)."""
    command = _alembic_command()

    def stamp(config: Config) -> None:
        command.stamp(config, revision)

    _run(info, stamp)
    _echo_current(info)


@migrate_cli.command("current")
@pass_script_info
def current_command(info: ScriptInfo) -> None:
    """Print the revision the sessions table is at."""
    _echo_current(info)


@migrate_cli.command("check")
@pass_script_info
def check_command(info: ScriptInfo) -> None:
    """Exit with status 1 when revisions are pending or the table differs from quartsess's
    table definition (drift)."""
    command = _alembic_command()

    settings = _run(info, command.check)
    click.echo(f"{settings.table}: at head, and the table matches quartsess's definition.")


def _alembic_command() -> ModuleType:
    """``alembic.command``, or a message saying how to install Alembic."""
    try:
        from alembic import command
    except ImportError:
        raise click.ClickException(
            f"quart sessions migrate needs Alembic: {INSTALL_ALEMBIC}"
        ) from None
    return command


def _echo_current(info: ScriptInfo) -> None:
    _alembic_command()
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    found: list[str] = []

    def current(config: Config) -> None:
        connection: Connection = config.attributes["connection"]
        version_table = f"{config.attributes['quartsess_table']}_alembic_version"  # as env.py
        context = MigrationContext.configure(connection, opts={"version_table": version_table})
        found.extend(context.get_current_heads())

    settings = _run(info, current)
    heads = set(ScriptDirectory(str(script_location())).get_heads())
    if not found:
        click.echo(f"{settings.table}: no revision recorded (run `quart sessions migrate`).")
    for revision in found:
        state = "head" if revision in heads else f"heads: {', '.join(sorted(heads))}"
        click.echo(f"{settings.table}: at revision {revision} ({state})")


def _run(info: ScriptInfo, work: Callable[[Config], None]) -> SessionConfig:
    """Load the app's settings, connect with them and run ``work`` on an Alembic config
    whose ``env.py`` migrates on that connection. Turns what an operator can fix into one
    message and exit status 1."""
    _alembic_command()
    from alembic.config import Config
    from alembic.util import CommandError

    settings = _settings(info)
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes.update(
        configure_logger=False,
        quartsess_url=settings.db_url,
        quartsess_table=settings.table,
    )
    url = settings.db_url.render_as_string(hide_password=True)

    async def main() -> None:
        engine = settings.engine  # the command's twin of the app's engine (cli_app)
        if engine is None:
            # The store's connect arguments (short time-outs, statements that work
            # through a transaction-pooling PgBouncer), then the app's engine options.
            connect_args = effective_connect_args(settings.db_url, settings.engine_options)
            options = {**settings.engine_options, "connect_args": connect_args}
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(migration_url(settings.db_url), **options)
        try:
            async with engine.connect() as connection:

                def migrate(sync_connection: Connection) -> None:
                    config.attributes["connection"] = sync_connection
                    work(config)

                await connection.run_sync(migrate)
                await connection.commit()
        finally:
            await engine.dispose()

    failures: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError)
    if settings.db_url.get_driver_name() == "asyncpg":
        from .stores.asyncpg_runner import asyncpg_errors

        failures += asyncpg_errors()  # some come unwrapped through SQLAlchemy 2.0
    try:
        _make_sqlite_folder(settings)
        with _alembic_log_to_stderr():
            asyncio.run(main())
    except CommandError as error:
        raise click.ClickException(f"{settings.table} in {url}: {error}") from None
    except failures as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise click.ClickException(f"the session database {url} failed: {reason}") from None
    return settings


def migration_url(url: URL) -> URL:
    """The URL Alembic's async engine migrates through: the app's own, except that a
    synchronous SQLite URL (``sqlite://``, ``sqlite+pysqlite://``), which the app serves
    with the standard library's ``sqlite3``, goes through aiosqlite (a dependency of
    quartsess) to the same file."""
    if url.get_backend_name() == "sqlite" and url.get_driver_name() != "aiosqlite":
        return url.set(drivername="sqlite+aiosqlite")
    return url


def _settings(info: ScriptInfo) -> SessionConfig:
    from .stores.sql import SqlStore

    parts = load_parts(info)
    if not isinstance(parts.store, SqlStore):
        raise click.ClickException(
            f"the sessions are kept in {parts.store.describe()}, which has no migrations: "
            "quart sessions migrate is for the SQL store"
        )
    return parts.config


def _make_sqlite_folder(settings: SessionConfig) -> None:
    database = settings.db_url.database
    if settings.backend == "sqlite" and database and database != ":memory:":
        if not database.startswith("file:"):
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)


@contextmanager
def _alembic_log_to_stderr() -> Iterator[None]:
    """Show Alembic's "Running upgrade ..." lines, as its own command does."""
    logger = logging.getLogger("alembic.runtime.migration")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: record.getMessage().startswith("Running "))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
