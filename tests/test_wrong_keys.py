"""``quart sessions revoke --user`` and ``list --user`` run with keys other than the
app's (the wrong SECRET_KEY, say) find no user's sessions: they must say that rows are
there which no configured key opens, and exit 1, instead of "Revoked 0 sessions."."""

from __future__ import annotations

import asyncio

from click.testing import Result
from cryptography.fernet import Fernet
from quart import Quart
from quart.cli import ScriptInfo

from quartsess import generate_key
from quartsess.cli import sessions_cli
from quartsess.stores.base import StoredSession
from tests.conftest import SECRET, AppFactory, FakeClock
from tests.support import add_routes, store_of, stored_rows
from tests.test_user_sessions import add_user_routes

QUIET = {"SESSION_PRUNE_INTERVAL": 0}


async def invoke(app: Quart, *args: str) -> Result:
    runner = app.test_cli_runner()
    info = ScriptInfo(create_app=lambda: app)
    return await asyncio.to_thread(runner.invoke, sessions_cli, list(args), obj=info)


def app_with(make_app: AppFactory, **config: object) -> Quart:
    return add_user_routes(add_routes(make_app(**QUIET, **config)))


async def log_in(app: Quart, *users: str) -> None:
    async with app.test_app() as test_app:
        for user in users:
            await test_app.test_client().post(f"/seed-login/{user}")
        await test_app.test_client().get("/visits")  # an anonymous one too


async def test_revoke_with_the_wrong_secret_says_so_and_exits_1(make_app: AppFactory) -> None:
    serving = app_with(make_app)
    await log_in(serving, "carol", "dave")
    wrong = app_with(make_app, SECRET_KEY="not the app's " + SECRET)
    for command in (["revoke", "--user", "carol"], ["list", "--user", "carol"]):
        result = await invoke(wrong, *command)
        assert result.exit_code == 1, result.output
        assert "none of the 3 live sessions checked opens with the configured keys" in (
            result.output
        )
        assert "SECRET_KEY" in result.output and "Traceback" not in result.output
    revoke_handle = await invoke(wrong, "revoke", "--user", "carol", "--handle", "h" * 22)
    assert revoke_handle.exit_code == 1
    assert "none of the 3 live sessions checked" in revoke_handle.output
    assert len(await rows_of(serving)) == 3  # nothing was revoked
    right = await invoke(serving, "revoke", "--user", "carol")
    assert right.exit_code == 0 and right.output.strip() == "Revoked 1 session."


async def rows_of(app: Quart) -> list[StoredSession]:
    async with app.test_app():
        return await stored_rows(app)


async def test_with_the_right_keys_no_sessions_is_no_error(make_app: AppFactory) -> None:
    app = app_with(make_app)
    async with app.test_app():
        pass  # the table, empty
    empty = await invoke(app, "revoke", "--user", "erin")
    assert empty.exit_code == 0 and empty.output.strip() == "Revoked 0 sessions."
    await log_in(app, "carol")
    async with app.test_app():  # and a row no key opens, left from a key removed
        await store_of(app).insert(
            StoredSession("f" * 64, Fernet(generate_key()).encrypt(b"?"), 1, 0, 0, 2**40, None)
        )
    result = await invoke(app, "revoke", "--user", "erin")  # a user with no session
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Revoked 0 sessions."
    listing = await invoke(app, "list", "--user", "erin")
    assert listing.exit_code == 0 and listing.output.strip() == "0 live sessions of user 'erin'."


async def test_only_live_rows_count(make_app: AppFactory, clock: FakeClock) -> None:
    """Expired rows waiting for the pruner say nothing about the keys."""
    serving = app_with(make_app, SESSION_IDLE_TIMEOUT=600)
    await log_in(serving, "carol")
    clock.advance(3600)
    wrong = app_with(make_app, SESSION_IDLE_TIMEOUT=600, SESSION_ENCRYPTION_KEYS=[generate_key()])
    result = await invoke(wrong, "revoke", "--user", "carol")
    assert result.exit_code == 0, result.output
