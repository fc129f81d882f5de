"""``quart sessions ...``: prune, gen-key, rotate-keys and stats, under Quart's own CLI."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import click
from quart.cli import AppGroup, ScriptInfo, pass_script_info

from .errors import ConfigurationError, InvalidPayload, describe_error
from .ids import log_id
from .keys import generate_key
from .migrate import migrate_cli
from .pruner import Pruner
from .stores.base import STORE_ERRORS, MaintainedStore
from .users import UserSessions, user_of

if TYPE_CHECKING:
    from quart import Quart

    from .codec import PayloadCodec
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


@sessions_cli.command("list")
@click.option("--user", "user", required=True, help="The user, as SESSION_USER_KEY holds it.")
@pass_script_info
def list_command(info: ScriptInfo, user: str) -> None:
    """List a user's live sessions, most recently active first."""

    async def listing(interface: ServerSessionInterface, store: MaintainedStore) -> None:
        found = await UserSessions(store, interface.codec, interface.policy, interface.clock).list(
            user
        )
        click.echo(f"{len(found)} live session{'s' if len(found) != 1 else ''} of user {user!r}.")
        for info_ in found:
            click.echo(
                f"{info_.handle}  created {_when(info_.created_at)}  last seen "
                f"{_when(info_.last_seen_at)}  expires {_when(info_.expires_at)}  "
                f"ip {info_.ip_address or '-'}  {info_.user_agent or '-'}"
            )

    _run(info, listing)


@sessions_cli.command("revoke")
@click.option("--user", "user", help="End every session of this user.")
@click.option("--handle", "handle", help="End the session with this handle.")
@pass_script_info
def revoke_command(info: ScriptInfo, user: str | None, handle: str | None) -> None:
    """End sessions now: all of a user's (--user), or one (--handle; with --user too,
    only if it is that user's). Effective on their next request, in every worker."""
    if user is None and handle is None:
        raise click.UsageError("give --user, --handle, or both")

    async def revoke(interface: ServerSessionInterface, store: MaintainedStore) -> int:
        users = UserSessions(store, interface.codec, interface.policy, interface.clock)
        if handle is not None:
            return int(await users.revoke(handle, user=user))
        return await users.revoke_all(user or "")

    ended = _run(info, revoke)
    click.echo(f"Revoked {ended} session{'s' if ended != 1 else ''}.")
    if handle is not None and not ended:
        raise click.exceptions.Exit(1)


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
        user_key = interface.config.user_key
        while rows := await store.scan(after, batch_size):
            after = rows[-1].id_hash
            scanned += len(rows)
            updates = []
            for row in rows:
                if codec.uses_newest_key(row.payload):
                    current += 1
                    continue
                try:
                    data, _ = codec.open(row.id_hash, row.payload)
                    user = user_of(data, user_key)
                    updates.append(
                        replace(
                            row,
                            payload=codec.rotate(row.payload),
                            # Re-keyed too, so the user's sessions are found under the newest key.
                            user_hash=None if user is None else codec.user_hash(user),
                            client=None if row.client is None else _rotated(codec, row.client),
                        )
                    )
                except InvalidPayload:
                    unreadable.append(row.id_hash)
                    if delete_unreadable and await store.delete_version(row.id_hash, row.version):
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


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _rotated(codec: PayloadCodec, ciphertext: bytes) -> bytes | None:
    try:
        return codec.rotate(ciphertext)
    except InvalidPayload:
        return None  # a client record no key opens is dropped, not kept unreadable


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
