"""From the key derived from ``SECRET_KEY`` to explicit ``SESSION_ENCRYPTION_KEYS``
without logging anyone out: ``quart sessions derived-key`` prints the derived keys, which
go after a new key until ``rotate-keys`` has re-encrypted every row (docs/deployment.md)."""

from __future__ import annotations

import asyncio
from typing import Any

from click.testing import Result
from cryptography.fernet import Fernet
from quart import Quart
from quart.cli import ScriptInfo

from quartsess import Session, generate_key
from quartsess.cli import sessions_cli
from tests.conftest import SECRET, AppFactory
from tests.support import add_routes, stored_rows
from tests.test_user_sessions import add_user_routes

QUIET = {"SESSION_PRUNE_INTERVAL": 0}


async def invoke(app: Quart, *args: str) -> Result:
    runner = app.test_cli_runner()
    info = ScriptInfo(create_app=lambda: app)
    return await asyncio.to_thread(runner.invoke, sessions_cli, list(args), obj=info)


def app_with(make_app: AppFactory, **config: Any) -> Quart:
    return add_user_routes(add_routes(make_app(**QUIET, **config)))


async def test_moving_to_explicit_keys_logs_nobody_out(make_app: AppFactory) -> None:
    derived_app = app_with(make_app)  # SECRET_KEY only: the key is derived from it
    async with derived_app.test_app() as test_app:
        ada, visitor = test_app.test_client(), test_app.test_client()
        await ada.post("/seed-login/ada")
        await ada.post("/set", json={"cart": {"tea": 2}})
        await visitor.get("/visits")

    printed = await invoke(derived_app, "derived-key")
    assert printed.exit_code == 0, printed.output
    derived = printed.stdout.strip()
    Fernet(derived)  # one key (no fallbacks), as SESSION_ENCRYPTION_KEYS takes it
    new = generate_key()

    # 1. The new key first, the derived one after it: every session still opens.
    both = app_with(make_app, SESSION_ENCRYPTION_KEYS=f"{new},{derived}")
    async with both.test_app():
        for client in (ada, visitor):
            client.app = both
        assert (await (await ada.get("/get")).get_json())["cart"] == {"tea": 2}
        [listed] = await both.extensions["quartsess"].user_sessions("ada")  # the old hash
        assert listed.user_agent is not None  # and its client record opens
    # 2. Every row re-encrypted with the new key.
    rotated = await invoke(both, "rotate-keys")
    assert rotated.exit_code == 0, rotated.output
    # 3. The derived key dropped, and even SECRET_KEY changed: nobody logged out.
    explicit = app_with(make_app, SESSION_ENCRYPTION_KEYS=[new], SECRET_KEY="another " + SECRET)
    async with explicit.test_app():
        for client in (ada, visitor):
            client.app = explicit
        for row in await stored_rows(explicit):
            Fernet(new).decrypt(row.payload)
        assert (await (await ada.get("/whoami")).get_json()) == {"user": "ada"}
        assert (await (await ada.get("/get")).get_json())["cart"] == {"tea": 2}
        assert (await (await visitor.get("/visits")).get_json()) == {"visits": 2}
        [listed] = await explicit.extensions["quartsess"].user_sessions("ada")
        assert listed.user_agent is not None


async def test_the_fallbacks_keys_follow_the_secret_keys() -> None:
    app = Quart(__name__)
    app.config.update(SECRET_KEY=SECRET, SECRET_KEY_FALLBACKS=["old-1", "old-2"])
    Session(app)
    result = await invoke(app, "derived-key")
    assert result.exit_code == 0, result.output
    keys = result.stdout.strip().split(",")
    assert len(keys) == len(set(keys)) == 3
    assert [key.encode() for key in keys] == list(
        app.extensions["quartsess"].parts_for(app).config.encryption_keys
    )


async def test_an_app_on_explicit_keys_gets_a_note_and_one_without_a_secret_an_error() -> None:
    app = Quart(__name__)
    app.config.update(SECRET_KEY=SECRET, SESSION_ENCRYPTION_KEYS=[generate_key()])
    Session(app)
    result = await invoke(app, "derived-key")
    assert result.exit_code == 0
    assert "only rows written before it did" in result.stderr
    Fernet(result.stdout.strip())

    keyless = Quart(__name__)
    keyless.config.update(SESSION_ENCRYPTION_KEYS=[generate_key()])
    Session(keyless)
    result = await invoke(keyless, "derived-key")
    assert result.exit_code == 1
    assert "no key is derived: SECRET_KEY" in result.output
    assert "Traceback" not in result.output
