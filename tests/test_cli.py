"""``quart sessions ...``: prune, gen-key, rotate-keys and stats on real rows.

Commands run their own event loop (as under the real ``quart`` command), so async tests
invoke them in a thread while the app's own lifecycle runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from click.testing import Result
from cryptography.fernet import Fernet
from quart import Quart, session
from quart.cli import ScriptInfo
from sqlalchemy.engine import make_url

from quartsess import ConfigurationError, generate_key
from quartsess.cli import sessions_cli
from quartsess.ids import log_id
from quartsess.stores.base import StoredSession
from tests.conftest import AppFactory, FakeClock
from tests.support import store_of, stored_rows

QUIET = {"SESSION_PRUNE_INTERVAL": 0}


async def invoke(app: Quart, *args: str) -> Result:
    runner = app.test_cli_runner()
    return await asyncio.to_thread(runner.invoke, args=["sessions", *args])


async def invoke_with(create_app: Any, *args: str) -> Result:
    runner = Quart(__name__).test_cli_runner()
    info = ScriptInfo(create_app=create_app)
    return await asyncio.to_thread(runner.invoke, sessions_cli, list(args), obj=info)


def add_routes(app: Quart) -> None:
    @app.get("/put/<key>/<int:size>")
    async def put(key: str, size: int) -> str:
        session[key] = "x" * size
        return "ok"

    @app.get("/get/<key>")
    async def get(key: str) -> str:
        return str(session.get(key, "-"))[:10]


def assert_clean_failure(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


async def test_stats_counts_rows_expired_rows_and_bytes(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app(SESSION_IDLE_TIMEOUT=600, **QUIET)
    add_routes(app)
    async with app.test_app() as test_app:
        await test_app.test_client().get("/put/a/10")
        await test_app.test_client().get("/put/b/2000")
        clock.advance(400)
        await test_app.test_client().get("/put/c/300")
        clock.advance(400)  # the first two are past their deadline
        rows = await stored_rows(app)
        result = await invoke(app, "stats")
    assert result.exit_code == 0, result.output
    sizes = [len(row.payload) for row in rows]
    assert re.search(r"^rows:\s+3$", result.output, re.M)
    assert re.search(r"^expired rows:\s+2$", result.output, re.M)
    assert re.search(rf"^payload bytes:\s+{sum(sizes)}$", result.output, re.M)
    assert re.search(rf"^largest payload bytes:\s+{max(sizes)}$", result.output, re.M)
    database = app.config["SESSION_DB_URL"]
    store = re.escape(f"table {app.config['SESSION_TABLE']!r} in {database}")
    assert re.search(rf"^store:\s+{store}$", result.output, re.M)


async def test_the_commands_name_the_database_with_its_password_masked(
    make_app: AppFactory, backend: str
) -> None:
    if backend == "sqlite":
        return  # no password in a file path
    url = make_url(make_app().config["SESSION_DB_URL"]).set(password="s3cret-pw")
    app = make_app(SESSION_DB_URL=url.render_as_string(hide_password=False), **QUIET)
    result = await invoke(app, "stats")
    assert "s3cret-pw" not in result.output
    assert "***" in result.output


async def test_stats_of_an_empty_table(make_app: AppFactory) -> None:
    app = make_app(**QUIET)
    async with app.test_app():
        result = await invoke(app, "stats")
    assert result.exit_code == 0, result.output
    assert re.search(r"^rows:\s+0$", result.output, re.M)
    assert re.search(r"^largest payload bytes:\s+0$", result.output, re.M)


async def test_prune_deletes_expired_rows_and_says_how_many(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app(SESSION_IDLE_TIMEOUT=600, **QUIET)
    add_routes(app)
    async with app.test_app() as test_app:
        old_one, old_two, fresh = (test_app.test_client() for _ in range(3))
        await old_one.get("/put/a/1")
        await old_two.get("/put/a/1")
        clock.advance(500)
        await fresh.get("/put/a/5")
        clock.advance(200)
        result = await invoke(app, "prune")
        assert result.exit_code == 0, result.output
        assert result.output.strip() == "Pruned 2 expired sessions."
        assert len(await stored_rows(app)) == 1
        assert await (await fresh.get("/get/a")).get_data(as_text=True) == "xxxxx"
        again = await invoke(app, "prune")
        assert again.output.strip() == "Pruned 0 expired sessions."


async def test_gen_key_prints_a_fresh_fernet_key(make_app: AppFactory) -> None:
    app = make_app(**QUIET)
    first, second = await invoke(app, "gen-key"), await invoke(app, "gen-key")
    assert first.exit_code == 0
    key = first.output.strip()
    assert key != second.output.strip()
    assert Fernet(key).decrypt(Fernet(key).encrypt(b"ok")) == b"ok"


async def test_rotate_keys_re_encrypts_with_the_newest_key_and_reports_unreadable_rows(
    make_app: AppFactory, clock: FakeClock
) -> None:
    old, new, foreign = generate_key(), generate_key(), generate_key()
    before = make_app(SESSION_ENCRYPTION_KEYS=[old], **QUIET)
    add_routes(before)
    async with before.test_app() as test_app:
        clients = [test_app.test_client() for _ in range(3)]
        for index, client in enumerate(clients):
            await client.get(f"/put/k/{index + 1}")
        stranger = "f" * 64
        await store_of(before).insert(
            StoredSession(stranger, Fernet(foreign).encrypt(b"?"), 1, 0, 0, 2**40)
        )

    rotated = make_app(SESSION_ENCRYPTION_KEYS=[new, old], **QUIET)
    result = await invoke(rotated, "rotate-keys", "--batch-size", "2")
    assert result.exit_code == 1, result.output  # rows were kept that no key opens
    assert "Scanned 4 rows: 3 re-encrypted with the newest key, 0 already used it" in result.output
    assert (
        f"1 rows no configured key can decrypt (hashed ID prefixes: {log_id(stranger)})"
        in result.output
    )
    assert "kept them (pass --delete-unreadable" in result.output
    assert stranger not in result.output  # only the prefix is shown

    only_new = make_app(SESSION_ENCRYPTION_KEYS=[new], **QUIET)
    add_routes(only_new)
    async with only_new.test_app():
        rows = {row.id_hash: row for row in await stored_rows(only_new)}
        assert len(rows) == 4
        for id_hash, row in rows.items():
            if id_hash != stranger:
                Fernet(new).decrypt(row.payload)  # no longer needs the old key
                assert row.version == 1  # content unchanged, so the version is kept
        for index, client in enumerate(clients):
            client.app = only_new
            body = await (await client.get("/get/k")).get_data(as_text=True)
            assert body == "x" * (index + 1)  # sessions survive dropping the old key

    again = await invoke(rotated, "rotate-keys")
    assert "Scanned 4 rows: 0 re-encrypted with the newest key, 3 already used it" in again.output

    purge = await invoke(rotated, "rotate-keys", "--delete-unreadable")
    assert purge.exit_code == 0, purge.output
    assert "deleted 1" in purge.output
    async with only_new.test_app():
        assert stranger not in {row.id_hash for row in await stored_rows(only_new)}


async def test_rotate_keys_resumes_after_an_interruption(make_app: AppFactory) -> None:
    old, new = generate_key(), generate_key()
    before = make_app(SESSION_ENCRYPTION_KEYS=[old], **QUIET)
    add_routes(before)
    async with before.test_app() as test_app:
        for _ in range(5):
            await test_app.test_client().get("/put/k/3")
    after = make_app(SESSION_ENCRYPTION_KEYS=[new, old], **QUIET)
    async with after.test_app():
        # A first run that stopped after two rows.
        store, codec = store_of(after), after.extensions["quartsess"].parts_for(after).codec
        done = [replace(r, payload=codec.rotate(r.payload)) for r in await stored_rows(after)]
        assert await store.replace_payloads(done[:2]) == 2
    result = await invoke(after, "rotate-keys")
    assert "Scanned 5 rows: 3 re-encrypted with the newest key, 2 already used it" in result.output


async def test_rotation_never_overwrites_a_concurrent_request(make_app: AppFactory) -> None:
    """The UPDATE carries the version read, so a row a request rewrote in between is
    left as the request wrote it (and needs no rotation: it used the newest key)."""
    old, new = generate_key(), generate_key()
    app = make_app(SESSION_ENCRYPTION_KEYS=[new, old], **QUIET)
    add_routes(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/put/k/1")
        [seen] = await stored_rows(app)  # what a rotation batch read
        await client.get("/put/k/7")  # a request writes before the batch is applied
        codec = app.extensions["quartsess"].parts_for(app).codec
        stale = [replace(seen, payload=codec.rotate(seen.payload))]
        assert await store_of(app).replace_payloads(stale) == 0
        assert await (await client.get("/get/k")).get_data(as_text=True) == "x" * 7


async def test_missing_sqlite_database_is_a_clear_error(
    tmp_path: Path, make_app: AppFactory
) -> None:
    app = make_app(SESSION_DB_URL=f"sqlite+aiosqlite:///{tmp_path / 'nowhere.sqlite3'}")
    result = await invoke(app, "stats")
    assert_clean_failure(result, "there is no SQLite database at")
    assert not (tmp_path / "nowhere.sqlite3").exists()


async def test_missing_table_is_a_clear_error(tmp_path: Path, make_app: AppFactory) -> None:
    database = tmp_path / "empty.sqlite3"
    sqlite3.connect(database).close()
    app = make_app(SESSION_DB_URL=f"sqlite+aiosqlite:///{database}", SESSION_TABLE="absent")
    result = await invoke(app, "prune")
    assert_clean_failure(result, "the sessions table 'absent' does not exist")
    assert "quart sessions migrate" in result.output


async def test_unreachable_database_server_is_a_clear_error(make_app: AppFactory) -> None:
    app = make_app(SESSION_DB_URL="postgresql+asyncpg://postgres@127.0.0.1:1/none")
    result = await invoke(app, "stats")
    assert_clean_failure(result, "the session store (table ")
    assert "in postgresql+asyncpg://postgres@127.0.0.1:1/none) failed: " in result.output


async def test_bad_key_configuration_is_a_clear_error() -> None:
    def create_app() -> Quart:
        raise ConfigurationError("SESSION_ENCRYPTION_KEYS", "key #0 is not a valid Fernet key")

    result = await invoke_with(create_app, "stats")
    assert_clean_failure(result, "quartsess is misconfigured: SESSION_ENCRYPTION_KEYS: key #0")


async def test_an_app_without_quartsess_is_a_clear_error() -> None:
    result = await invoke_with(lambda: Quart(__name__), "prune")
    assert_clean_failure(result, "quartsess is not set up on this app")


async def test_the_real_quart_command(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'not-yet.sqlite3'}"
    (tmp_path / "sessapp.py").write_text(
        "import os\n"
        "from quart import Quart\n"
        "from quartsess import Session\n"
        "app = Quart(__name__)\n"
        "app.config.update(SECRET_KEY='s' * 32, SESSION_DB_URL=os.environ['DB_URL'])\n"
        "Session(app)\n"
    )

    async def quart(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quart", "--app", "sessapp", "sessions", *args,
            cwd=tmp_path, env={**os.environ, "DB_URL": db_url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        return process.returncode or 0, output.decode()

    code, output = await quart("gen-key")
    assert code == 0
    Fernet(output.strip())
    code, output = await quart("stats")
    assert code == 1
    assert "there is no SQLite database" in output
    assert "Traceback" not in output
