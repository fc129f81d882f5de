"""``quart sessions ...``: prune, gen-key, derived-key, rotate-keys, stats, list, revoke
and migrate, under Quart's own CLI."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import click
from quart.cli import AppGroup, ScriptInfo, pass_script_info

from .cli_app import close_parts, load_app, load_parts
from .config import derived_keys
from .errors import ConfigurationError, StoreError, TableMissing
from .ids import log_id
from .keys import generate_key
from .migrate import migrate_cli
from .rotation import ROTATE_BATCH_SIZE, KeyCheck, check_keys, rotate_keys

if TYPE_CHECKING:
    from .extension import SessionParts

T = TypeVar("T")

MAX_LISTED_IDS = 20

sessions_cli = AppGroup("sessions", help="Manage quartsess's server-side sessions.")
sessions_cli.add_command(migrate_cli)


@sessions_cli.command("gen-key")
def gen_key_command() -> None:
    """Print a new Fernet key for SESSION_ENCRYPTION_KEYS (put it first to rotate)."""
    click.echo(generate_key())


@sessions_cli.command("derived-key")
@pass_script_info
def derived_key_command(info: ScriptInfo) -> None:
    """Print the Fernet keys derived from the app's SECRET_KEY (then SECRET_KEY_FALLBACKS).

    To move to explicit keys without logging anyone out, set SESSION_ENCRYPTION_KEYS to a
    new key (gen-key) followed by these, run rotate-keys, then drop these."""
    app = load_app(info)
    try:
        keys = derived_keys(app.config)
    except ConfigurationError as error:
        raise click.ClickException(f"no key is derived: {error}") from None
    if app.config.get("SESSION_ENCRYPTION_KEYS"):
        click.echo(
            "note: the app sets SESSION_ENCRYPTION_KEYS, so these derived keys open only rows "
            "written before it did.",
            err=True,
        )
    click.echo(",".join(key.decode("ascii") for key in keys))


@sessions_cli.command("prune")
@pass_script_info
def prune_command(info: ScriptInfo) -> None:
    """Delete expired sessions now and print how many went."""

    async def prune(parts: SessionParts) -> int:
        return await parts.pruner.prune()

    deleted = _run(info, prune)
    click.echo(f"Pruned {deleted} expired session{'s' if deleted != 1 else ''}.")


@sessions_cli.command("stats")
@pass_script_info
def stats_command(info: ScriptInfo) -> None:
    """Print the number of sessions, how many have expired, and payload sizes."""

    async def stats(parts: SessionParts) -> None:
        result = await parts.store.stats(int(parts.saver.clock()))
        click.echo(f"store:                 {parts.store.describe()}")
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

    async def listing(parts: SessionParts) -> KeyCheck | None:
        found = await parts.users.list(user)
        click.echo(f"{len(found)} live session{'s' if len(found) != 1 else ''} of user {user!r}.")
        for info_ in found:
            click.echo(
                f"{info_.handle}  created {_when(info_.created_at)}  last seen "
                f"{_when(info_.last_seen_at)}  expires {_when(info_.expires_at)}  "
                f"authenticated {_when(info_.authenticated_at) if info_.authenticated_at else '-'}"
                f"  ip {info_.ip_address or '-'}  {info_.user_agent or '-'}"
            )
        return None if found else await _check_keys(parts)

    _fail_on_foreign_keys(_run(info, listing))


@sessions_cli.command("revoke")
@click.option("--user", "user", help="End every session of this user.")
@click.option("--handle", "handle", help="End the session with this handle.")
@pass_script_info
def revoke_command(info: ScriptInfo, user: str | None, handle: str | None) -> None:
    """End sessions now: all of a user's (--user), or one (--handle; with --user too,
    only if it is that user's). Effective on their next request, in every worker."""
    if user is None and handle is None:
        raise click.UsageError("give --user, --handle, or both")

    async def revoke(parts: SessionParts) -> tuple[int, KeyCheck | None]:
        if handle is not None:
            ended = int(await parts.users.revoke(handle, user=user))
        else:
            ended = await parts.users.revoke_all(user or "")
        # A user's rows are found by a keyed hash: with keys other than the app's, none is.
        check = await _check_keys(parts) if user is not None and not ended else None
        return ended, check

    ended, check = _run(info, revoke)
    click.echo(f"Revoked {ended} session{'s' if ended != 1 else ''}.")
    _fail_on_foreign_keys(check)
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

    async def rotate(parts: SessionParts) -> None:
        report = await rotate_keys(
            parts.store,
            parts.codec,
            parts.owners,
            parts.config.user_key,
            batch_size=batch_size,
            delete_unreadable=delete_unreadable,
        )
        click.echo(f"Rotating the sessions in {parts.store.describe()}.")
        click.echo(
            f"Scanned {report.scanned} rows: {report.rotated} re-encrypted with the newest "
            f"key, {report.current} already used it, {report.raced} rewritten by a request "
            "meanwhile (left as is)."
        )
        unreadable = report.unreadable
        if unreadable:
            listed = ", ".join(log_id(id_hash) for id_hash in unreadable[:MAX_LISTED_IDS])
            more = len(unreadable) - MAX_LISTED_IDS
            if more > 0:
                listed += f" and {more} more"
            action = (
                f"deleted {report.deleted}"
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


async def _check_keys(parts: SessionParts) -> KeyCheck:
    return await check_keys(parts.store, parts.codec, parts.policy, int(parts.saver.clock()))


def _fail_on_foreign_keys(check: KeyCheck | None) -> None:
    """Exit 1 saying so when the stored sessions do not open with this command's keys:
    "no session of this user" would then be a guess."""
    if check is None or not check.opens_none:
        return
    sessions = "session" if check.checked == 1 else "sessions"
    raise click.ClickException(
        f"none of the {check.checked} live {sessions} checked opens with the configured "
        "keys, so this command cannot tell whose they are: it does not run with the keys "
        "the app serves with. Load the app with its SECRET_KEY (and SECRET_KEY_FALLBACKS) "
        "or SESSION_ENCRYPTION_KEYS."
    )


def _run(info: ScriptInfo, work: Callable[[SessionParts], Awaitable[T]]) -> T:
    """Load the app, run ``work`` on its quartsess parts, close the store; turn the
    errors an operator can fix into a message and exit status 1."""
    parts = load_parts(info)
    store = parts.store

    async def main() -> T:
        try:
            await store.check_table()
            return await work(parts)
        except TableMissing as error:
            raise click.ClickException(str(error)) from None
        except StoreError as error:
            raise click.ClickException(
                f"the session store ({store.describe()}) failed: {error}"
            ) from None
        finally:
            await close_parts(parts)

    return asyncio.run(main())


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
