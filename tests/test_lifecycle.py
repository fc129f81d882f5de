"""Expiry, concurrent requests, logout races, regeneration and websockets."""

from __future__ import annotations

import asyncio

from quart import Response, jsonify, session, websocket

from tests.conftest import AppFactory, FakeClock
from tests.support import (
    add_gated_route,
    add_routes,
    bounded,
    session_cookie,
    start,
    stored_rows,
)


async def test_idle_timeout_is_enforced_on_read(make_app: AppFactory, clock: FakeClock) -> None:
    app = add_routes(make_app(SESSION_IDLE_TIMEOUT=600, SESSION_TOUCH_INTERVAL=60))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"user": "ada"})
        for _ in range(5):  # activity keeps it alive well past one idle period
            clock.advance(300)
            response = await client.get("/get/user")
            assert await response.get_json() == {"value": "ada"}
        clock.advance(601)
        response = await client.get("/get/user")
        assert await response.get_json() == {"value": None}
        assert await stored_rows(app) == []  # not adopted: ended, its row deleted


async def test_absolute_timeout_ends_even_an_active_session(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = add_routes(
        make_app(SESSION_IDLE_TIMEOUT=600, SESSION_ABSOLUTE_TIMEOUT=1000, SESSION_TOUCH_INTERVAL=0)
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"user": "ada"})
        clock.advance(500)
        assert await (await client.get("/get/user")).get_json() == {"value": "ada"}
        clock.advance(499)
        assert await (await client.get("/get/user")).get_json() == {"value": "ada"}
        clock.advance(1)
        assert await (await client.get("/get/user")).get_json() == {"value": None}


async def test_shortening_the_idle_timeout_applies_to_existing_rows(
    make_app: AppFactory, clock: FakeClock
) -> None:
    long_lived = add_routes(make_app(SESSION_IDLE_TIMEOUT=3600))
    async with long_lived.test_app() as test_app:
        sid = session_cookie(await test_app.test_client().post("/set", json={"n": 1}))
    assert sid
    clock.advance(120)
    strict = add_routes(make_app(SESSION_IDLE_TIMEOUT=60, SESSION_TOUCH_INTERVAL=10))
    async with strict.test_app() as test_app:
        client = test_app.test_client()
        client.set_cookie("localhost", "session", sid)
        assert await (await client.get("/get/n")).get_json() == {"value": None}


async def test_concurrent_requests_changing_different_keys_both_survive(
    make_app: AppFactory,
) -> None:
    app = add_routes(make_app())
    gates = add_gated_route(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"base": 0})
        slow = await start(client, "/gated/b/a/from-slow", gates["b"][0])
        await client.post("/set", json={"b": "from-fast"})
        gates["b"][1].set()
        assert (await bounded(slow)).status_code == 200
        response = await client.get("/get")
        assert await response.get_json() == {"base": 0, "a": "from-slow", "b": "from-fast"}
        [row] = await stored_rows(app)
        assert row.version == 3


async def test_a_key_removed_by_one_request_stays_removed_after_a_concurrent_save(
    make_app: AppFactory,
) -> None:
    app = add_routes(make_app())
    gates = add_gated_route(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"keep": 1, "drop": 2})
        slow = await start(client, "/gated/b/a/one", gates["b"][0])
        await client.post("/pop/drop")
        gates["b"][1].set()
        await bounded(slow)
        assert await (await client.get("/get")).get_json() == {"keep": 1, "a": "one"}


async def test_logout_is_not_undone_by_a_slower_request(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    gates = add_gated_route(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        sid = session_cookie(await client.post("/login", json={"user": "ada"}))
        slow = await start(client, "/gated/b/cart/full", gates["b"][0])
        logout = await client.post("/clear")
        assert session_cookie(logout) == ""
        assert await stored_rows(app) == []
        gates["b"][1].set()
        slow_response = await bounded(slow)
        assert slow_response.status_code == 200
        assert session_cookie(slow_response) is None  # the logout deleted the cookie itself
        assert await stored_rows(app) == []

        replay = test_app.test_client()
        assert sid
        replay.set_cookie("localhost", "session", sid)
        assert await (await replay.get("/get")).get_json() == {}


async def test_regenerate_changes_the_cookie_and_deletes_the_old_row(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        first = session_cookie(await client.post("/set", json={"n": 1}))
        second = session_cookie(await client.post("/login", json={"user": "ada"}))
        assert first and second and first != second
        assert len(await stored_rows(app)) == 1
        assert await (await client.get("/get")).get_json() == {"n": 1, "user": "ada"}


async def test_a_websocket_change_is_visible_to_the_next_http_request(make_app: AppFactory) -> None:
    app = add_routes(make_app())

    @app.websocket("/ws")
    async def ws() -> None:
        message = await websocket.receive()
        session["from_websocket"] = message
        session["visits"] = session.get("visits", 0) + 10
        await websocket.send("saved")

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/visits")
        async with client.websocket("/ws") as connection:
            await connection.send("hello")
            assert await bounded(connection.receive()) == "saved"
        response = await client.get("/get")
        assert await response.get_json() == {"visits": 11, "from_websocket": "hello"}


async def test_a_new_session_changed_in_a_websocket_is_not_stored(make_app: AppFactory) -> None:
    app = add_routes(make_app())

    @app.websocket("/ws")
    async def ws() -> None:
        session["orphan"] = True
        await websocket.send("done")

    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.websocket("/ws") as connection:
            assert await bounded(connection.receive()) == "done"
        assert await stored_rows(app) == []


async def test_a_long_lived_websocket_can_save_before_it_ends(make_app: AppFactory) -> None:
    from quartsess import session as typed_session

    app = add_routes(make_app())

    @app.websocket("/ws/live")
    async def live() -> None:
        while True:
            message = await websocket.receive()
            typed_session["last"] = message
            await typed_session.save()
            await websocket.send(f"saved {message}")

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"user": "ada"})
        async with client.websocket("/ws/live") as connection:
            await connection.send("one")
            assert await bounded(connection.receive()) == "saved one"
            response = await client.get("/get")  # while the socket is still open
            assert await response.get_json() == {"user": "ada", "last": "one"}
            await connection.send("two")
            assert await bounded(connection.receive()) == "saved two"
            response = await client.get("/get/last")
            assert await response.get_json() == {"value": "two"}


async def test_many_concurrent_writers_of_one_session_all_survive(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    writers = 24
    gate = asyncio.Event()
    arrived = 0
    all_in = asyncio.Event()

    @app.post("/writer/<int:number>")
    async def writer(number: int) -> Response:
        nonlocal arrived
        session.get("user")
        arrived += 1
        if arrived == writers:
            all_in.set()
        await gate.wait()
        session[f"key{number}"] = number
        return jsonify(ok=True)

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"user": "ada"})
        requests = [asyncio.ensure_future(client.post(f"/writer/{n}")) for n in range(writers)]
        await bounded(all_in.wait())
        gate.set()
        responses = await bounded(asyncio.gather(*requests))
        assert [r.status_code for r in responses] == [200] * writers
        data = await (await client.get("/get")).get_json()
    assert data == {"user": "ada", **{f"key{n}": n for n in range(writers)}}
