"""``quart sessions ...``: prune, gen-key, rotate-keys and stats, under Quart's own CLI."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click
from quart.cli import AppGroup, ScriptInfo, pass_script_info

from .errors import ConfigurationError, InvalidPayload, describe_error
from .ids import log_id
from .keys import generate_key
from .migrate import migrate_cli
from .pruner import Pruner
from .stores.base import STORE_ERRORS, MaintainedStore

if TYPE_CHECKING:
    from quart import Quart

    from .extension import Session
    from .interface import ServerSessionInterface

T = TypeVar("T")

ROTATE_BATCH_SIZE = 500
MAX_LISTED_IDS = 20

sessions_cli = AppGroup("sessions", help="Manage quartsess's server-side sessions.")
sessions_cli.add_command(migrate_cli)


@sessions_cli.command("gen-key")
def gen_key_command() -> None:
    """Print a new Fernet key for SESSION_ENCRYPTION_KEYS (put it first to rotate)."""
    click.echo(generate_key())


@sessions_cli.command("prune")
@pass_script_info
def prune_command(info: ScriptInfo) -> None:
    """Delete expired sessions now and print how many went."""

    async def prune(interface: ServerSessionInterface, store: MaintainedStore) -> int:
        return await Pruner(store, clock=interface.clock, interval=0).prune()

    deleted = _run(info, prune)
    click.echo(f"Pruned {deleted} expired session{'s' if deleted != 1 else ''}.")


@sessions_cli.command("stats")
@pass_script_info
def stats_command(info: ScriptInfo) -> None:
    """Print the number of sessions, how many have expired, and payload sizes."""

    async def stats(interface: ServerSessionInterface, store: MaintainedStore) -> None:
        result = await store.stats(int(interface.clock()))
        click.echo(f"database:              {_database(interface)}")
        click.echo(f"table:                 {interface.config.table}")
        click.echo(f"rows:                  {result.rows}")
        click.echo(f"expired rows:          {result.expired_rows}")
        click.echo(f"payload bytes:         {result.payload_bytes}")
        click.echo(f"largest payload bytes: {result.largest_payload_bytes}")

    _run(info, stats)


@sessions_cli.command("rotate-keys")
@click.option(
    "--delete-unreadable",
    is_flag=True,
    help="Delete rows that no configured key can decrypt (default: report and keep them).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=ROTATE_BATCH_SIZE,
    show_default=True,
    help="Rows read and rewritten per database round trip.",
)
@pass_script_info
def rotate_keys_command(info: ScriptInfo, delete_unreadable: bool, batch_size: int) -> None:
    """Re-encrypt every session with the newest key of SESSION_ENCRYPTION_KEYS.

    Works in batches while the app keeps serving, and is safe to interrupt and run
    again: rows already encrypted with the newest key are left alone, and a row that a
    request rewrote in the meantime is not overwritten. Remove an old key from the
    configuration only after this reports no rows left to rotate."""

    async def rotate(interface: ServerSessionInterface, store: MaintainedStore) -> None:
        codec = interface.codec
        scanned = current = rotated = raced = deleted = 0
        unreadable: list[str] = []
        after = ""
        while rows := await store.scan(after, batch_size):
            after = rows[-1][0]
            scanned += len(rows)
            updates = []
            for id_hash, payload, version in rows:
                if codec.uses_newest_key(payload):
                    current += 1
                    continue
                try:
                    updates.append((id_hash, version, codec.rotate(payload)))
                except InvalidPayload:
                    unreadable.append(id_hash)
                    if delete_unreadable and await store.delete_version(id_hash, version):
                        deleted += 1
            done = await store.replace_payloads(updates) if updates else 0
            rotated += done
            raced += len(updates) - done
        click.echo(
            f"Rotating the sessions in table {interface.config.table!r} of {_database(interface)}."
        )
        click.echo(
            f"Scanned {scanned} rows: {rotated} re-encrypted with the newest key, "
            f"{current} already used it, {raced} rewritten by a request meanwhile (left as is)."
        )
        if unreadable:
            listed = ", ".join(log_id(id_hash) for id_hash in unreadable[:MAX_LISTED_IDS])
            more = len(unreadable) - MAX_LISTED_IDS
            if more > 0:
                listed += f" and {more} more"
            action = (
                f"deleted {deleted}"
                if delete_unreadable
                else "kept them (pass --delete-unreadable to delete them)"
            )
            click.echo(
                f"{len(unreadable)} rows no configured key can decrypt "
                f"(hashed ID prefixes: {listed}); {action}."
            )
            if not delete_unreadable:
                # Not done: an operator must not drop the old key on the strength of this run.
                raise click.exceptions.Exit(1)

    _run(info, rotate)


Work = Callable[["ServerSessionInterface", MaintainedStore], Awaitable[T]]


def _run(info: ScriptInfo, work: Work[T]) -> T:
    """Load the app, open a store of its own on the app's database, run ``work``, close;
    turn the errors an operator can fix into a message and exit status 1."""
    extension, interface = _extension(info)
    config = interface.config
    url = _database(interface)
    database = config.db_url.database
    if config.backend == "sqlite" and database and database != ":memory:":
        if not database.startswith("file:") and not os.path.exists(database):
            raise click.ClickException(f"there is no SQLite database at {database}")

    async def main() -> T:
        store = extension.make_store(config)
        try:
            if not await store.table_exists():
                raise click.ClickException(
                    f"the sessions table {config.table!r} does not exist in {url}: create it with "
                    "`quart sessions migrate`, or start the app once with SESSION_CREATE_TABLE=True"
                )
            return await work(interface, store)
        except STORE_ERRORS as error:
            raise click.ClickException(
                f"the session database {url} failed: {describe_error(error)}"
            ) from None
        finally:
            await store.close()

    return asyncio.run(main())


def _database(interface: ServerSessionInterface) -> str:
    return interface.config.db_url.render_as_string(hide_password=True)


def _extension(info: ScriptInfo) -> tuple[Session, ServerSessionInterface]:
    try:
        app: Quart = info.load_app()
    except ConfigurationError as error:
        raise click.ClickException(f"quartsess is misconfigured: {error}") from None
    extension: Session | None = app.extensions.get("quartsess")
    if extension is None:
        raise click.ClickException(
            "quartsess is not set up on this app: call Session(app) when creating it"
        )
    return extension, extension.interface_for(app)
