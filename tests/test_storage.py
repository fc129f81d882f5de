"""What is stored, and how: round trips, encryption at rest, hashed IDs, writes on change."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone

from markupsafe import Markup
from quart import jsonify, session

from quartsess.serializer import SessionSerializer
from tests.conftest import AppFactory, FakeClock
from tests.support import StatementLog, add_routes, session_cookie, stored_rows


async def test_tagged_values_survive_a_round_trip(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    values = {
        "naive": datetime(2024, 2, 29, 13, 45, 7, 123456),
        "aware": datetime(2024, 2, 29, 13, 45, 7, 654321, tzinfo=timezone(timedelta(hours=2))),
        "utc": datetime(2030, 1, 1, tzinfo=UTC),
        "bytes": b"\x00\xffbinary",
        "tuple": (1, "two", (3.5, None)),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "markup": Markup("<b>bold</b>"),
        "nested": {"list": [1, {"deep": (True, False)}], " t": "looks like a tag"},
        "unicode": "Grüße, 世界 🎉",
    }

    @app.get("/store")
    async def store() -> str:
        session.update(values)
        return "ok"

    @app.get("/check")
    async def check() -> dict[str, bool]:
        return {
            key: session[key] == value and type(session[key]) is type(value)
            for key, value in values.items()
        }

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/store")
        response = await client.get("/check")
        assert await response.get_json() == dict.fromkeys(values, True)


async def test_row_holds_neither_plaintext_nor_the_raw_cookie_id(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.post("/set", json={"secret": "hunter2-plaintext-marker"})
        sid = session_cookie(response)
        assert sid is not None and len(sid) == 43
        [row] = await stored_rows(app)
    assert row.id_hash == hashlib.sha256(sid.encode()).hexdigest()
    for column in (row.payload, row.id_hash.encode()):
        assert b"hunter2" not in column
        assert sid.encode() not in column
    assert row.payload.startswith(b"gAAAAA")  # a Fernet token


async def test_nested_in_place_change_is_saved_without_modified(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for _ in range(3):
            await client.post("/cart/apple")
        await client.post("/cart/pear")
        response = await client.get("/get/cart")
        assert await response.get_json() == {"value": {"apple": 3, "pear": 1}}
        [row] = await stored_rows(app)
        assert row.version == 4  # one insert, three updates


async def test_read_only_requests_send_one_select_and_no_write(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = add_routes(make_app(SESSION_TOUCH_INTERVAL=60))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"user": "ada"})
        with StatementLog(app) as log:
            for _ in range(5):
                clock.advance(5)
                response = await client.get("/get/user")
                assert await response.get_json() == {"value": "ada"}
                assert session_cookie(response) is None
        assert log.statements == ["load"] * 5


async def test_touch_is_throttled_and_extends_the_idle_deadline(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = add_routes(make_app(SESSION_TOUCH_INTERVAL=60, SESSION_IDLE_TIMEOUT=600))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"user": "ada"})
        [before] = await stored_rows(app)
        clock.advance(61)
        with StatementLog(app) as log:
            await client.get("/get/user")
            await client.get("/get/user")
        assert log.statements == ["load", "touch", "load"]
        [after] = await stored_rows(app)
    assert after.version == before.version  # a touch is not a content change
    assert after.payload == before.payload
    assert after.expires_at == before.expires_at + 61


async def test_new_visitor_costs_one_insert_and_a_change_one_update(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/static-page")  # warm-up: table creation is not counted
        with StatementLog(app) as log:
            await client.get("/visits")
        assert log.statements == ["insert"]
        with StatementLog(app) as log:
            await client.get("/visits")
        assert log.statements == ["load", "update"]


async def test_a_session_that_stays_empty_writes_nothing(make_app: AppFactory) -> None:
    app = add_routes(make_app())

    @app.get("/peek")
    async def peek() -> dict[str, object]:
        return {"user": session.get("user"), "new": session.new, "sid": session.sid}

    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.get("/peek")
        assert await response.get_json() == {"user": None, "new": True, "sid": None}
        assert session_cookie(response) is None
        assert response.headers["Vary"] == "Cookie"
        assert await stored_rows(app) == []


async def test_sid_is_the_cookie_once_stored(make_app: AppFactory) -> None:
    app = add_routes(make_app())

    @app.get("/sid")
    async def sid() -> object:
        return jsonify(sid=session.sid, new=session.new)

    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.get("/visits")
        cookie = session_cookie(response)
        response = await client.get("/sid")
        assert await response.get_json() == {"sid": cookie, "new": False}


async def test_popping_every_key_deletes_the_row_and_the_cookie(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"a": 1})
        response = await client.post("/pop/a")
        assert session_cookie(response) == ""
        assert await stored_rows(app) == []


def test_serializer_output_is_stable_for_change_detection() -> None:
    serializer = SessionSerializer()
    data = {"when": datetime(2024, 1, 1, 12, 0, 0, 5), "cart": {"x": 1}, "t": (1, 2)}
    first = serializer.dump_bytes(data)
    assert serializer.dump_bytes(serializer.load_bytes(first)) == first
