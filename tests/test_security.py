"""Cookies the server never issued, tampered or moved payloads, keys and rotation."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import update

from quartsess import generate_key
from quartsess.ids import hash_session_id, new_session_id
from tests.conftest import AppFactory
from tests.support import add_routes, execute, session_cookie, store_of, stored_rows

BAD_COOKIES = {
    "unknown": new_session_id(),
    "too short": "abc",
    "bad characters": "!" * 43,
    "too long": "a" * 44,
    "empty": "",
    "sql": "' OR 1=1 --" + "a" * 32,
}


@pytest.mark.parametrize("kind", BAD_COOKIES)
async def test_a_cookie_the_server_never_issued_is_not_adopted(
    make_app: AppFactory, kind: str
) -> None:
    app = add_routes(make_app())
    value = BAD_COOKIES[kind]
    async with app.test_app() as test_app:
        client = test_app.test_client()
        client.set_cookie("localhost", "session", value)
        response = await client.get("/get/user")
        assert await response.get_json() == {"value": None}
        assert session_cookie(response) is None  # nothing stored, no cookie issued
        assert await stored_rows(app) == []

        response = await client.post("/set", json={"user": "mallory"})
        issued = session_cookie(response)
        assert issued and issued != value
        [row] = await stored_rows(app)
        assert row.id_hash == hash_session_id(issued)


async def test_fixation_login_issues_a_new_id_and_kills_the_old(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        before = session_cookie(await client.post("/set", json={"cart": {"x": 1}}))
        after = session_cookie(await client.post("/login", json={"user": "ada"}))
        assert before and after and before != after
        [row] = await stored_rows(app)
        assert row.id_hash == hash_session_id(after)
        response = await client.get("/get")
        assert await response.get_json() == {"cart": {"x": 1}, "user": "ada"}

        replay = test_app.test_client()
        replay.set_cookie("localhost", "session", before)
        response = await replay.get("/get")
        assert await response.get_json() == {}


async def test_tampered_ciphertext_gives_a_fresh_session_and_a_safe_log_line(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        # Not a hex string: the log line carries a hex prefix of the ID's hash.
        sid = session_cookie(await client.post("/set", json={"user": "Ada Lovelace"}))
        assert sid
        [row] = await stored_rows(app)
        tampered = (
            row.payload[:-5] + (b"A" if row.payload[-5:-4] != b"A" else b"B") + row.payload[-4:]
        )
        table = store_of(app).table
        await execute(app, update(table).values(payload=tampered))
        with caplog.at_level(logging.WARNING, logger="quartsess"):
            response = await client.get("/get/user")
        assert await response.get_json() == {"value": None}
        [record] = [r for r in caplog.records if "security" in r.getMessage()]
        assert sid not in record.getMessage()
        assert hash_session_id(sid)[:12] in record.getMessage()
        assert "Lovelace" not in record.getMessage()
        assert len(await stored_rows(app)) == 1  # left to expire, not deleted


async def test_payload_copied_onto_another_row_is_rejected(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        admin, guest = test_app.test_client(), test_app.test_client()
        admin_sid = session_cookie(await admin.post("/set", json={"role": "admin"}))
        guest_sid = session_cookie(await guest.post("/set", json={"role": "guest"}))
        assert admin_sid and guest_sid
        rows = {row.id_hash: row for row in await stored_rows(app)}
        admin_payload = rows[hash_session_id(admin_sid)].payload
        table = store_of(app).table
        await execute(
            app,
            update(table)
            .where(table.c.id_hash == hash_session_id(guest_sid))
            .values(payload=admin_payload),
        )
        with caplog.at_level(logging.WARNING, logger="quartsess"):
            response = await guest.get("/get/role")
        assert await response.get_json() == {"value": None}
        assert any("belongs to another session" in r.getMessage() for r in caplog.records)


async def test_rows_written_with_an_old_key_open_after_a_new_key_is_added(
    make_app: AppFactory,
) -> None:
    old_key, new_key = generate_key(), generate_key()
    first = add_routes(make_app(SESSION_ENCRYPTION_KEYS=[old_key]))
    async with first.test_app() as test_app:
        sid = session_cookie(await test_app.test_client().post("/set", json={"n": 1}))
    assert sid

    second = add_routes(make_app(SESSION_ENCRYPTION_KEYS=f"{new_key}, {old_key}"))
    async with second.test_app() as test_app:
        client = test_app.test_client()
        client.set_cookie("localhost", "session", sid)
        response = await client.get("/get/n")
        assert await response.get_json() == {"value": 1}
        await client.post("/set", json={"n": 2})  # a write re-encrypts with the newest key
        [row] = await stored_rows(second)
    assert Fernet(new_key.encode()).decrypt(row.payload)
    with pytest.raises(InvalidToken):
        Fernet(old_key.encode()).decrypt(row.payload)


async def test_secret_key_fallbacks_keep_sessions_open_after_rotation(
    make_app: AppFactory,
) -> None:
    first = add_routes(make_app(SECRET_KEY="old-secret-key-0123456789"))
    async with first.test_app() as test_app:
        sid = session_cookie(await test_app.test_client().post("/set", json={"n": 1}))
    assert sid
    second = add_routes(
        make_app(
            SECRET_KEY="new-secret-key-0123456789",
            SECRET_KEY_FALLBACKS=["old-secret-key-0123456789"],
        )
    )
    async with second.test_app() as test_app:
        client = test_app.test_client()
        client.set_cookie("localhost", "session", sid)
        response = await client.get("/get/n")
        assert await response.get_json() == {"value": 1}


async def test_a_removed_key_hides_the_session_until_it_is_restored(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    key, other = generate_key(), generate_key()
    first = add_routes(make_app(SESSION_ENCRYPTION_KEYS=[key]))
    async with first.test_app() as test_app:
        sid = session_cookie(await test_app.test_client().post("/set", json={"n": 1}))
    assert sid

    without = add_routes(make_app(SESSION_ENCRYPTION_KEYS=[other]))
    async with without.test_app() as test_app:
        client = test_app.test_client()
        client.set_cookie("localhost", "session", sid)
        with caplog.at_level(logging.WARNING, logger="quartsess"):
            response = await client.get("/get/n")
        assert await response.get_json() == {"value": None}
        assert any("does not decrypt" in r.getMessage() for r in caplog.records)
        assert len(await stored_rows(without)) == 1

    restored = add_routes(make_app(SESSION_ENCRYPTION_KEYS=[other, key]))
    async with restored.test_app() as test_app:
        client = test_app.test_client()
        client.set_cookie("localhost", "session", sid)
        response = await client.get("/get/n")
        assert await response.get_json() == {"value": 1}
