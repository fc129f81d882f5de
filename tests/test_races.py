"""Interleavings that used to lose data or undo a logout, pinned down step by step.

The store is the real one; a wrapper around one of its methods lets a test run another
request at an exact point of a save (between its failed update and its retry)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from quart import Quart

from quartsess import SessionNotSerializable
from tests.conftest import AppFactory
from tests.support import (
    add_gated_route,
    add_routes,
    bounded,
    session_cookie,
    start,
    store_of,
    stored_rows,
)


def hook_update(app: Quart, before_retry: Callable[[], Awaitable[None]]) -> None:
    """Run ``before_retry`` once, just before the second update attempt of any save."""
    store = store_of(app)
    original = store.update
    calls = {"n": 0}

    async def update(*args: Any, **kwargs: Any) -> bool:
        calls["n"] += 1
        if calls["n"] == 2:
            await before_retry()
        return await original(*args, **kwargs)

    store.update = update  # type: ignore[method-assign]


async def test_a_save_that_loses_twice_keeps_the_latest_value_of_keys_it_did_not_change(
    make_app: AppFactory,
) -> None:
    app = add_routes(make_app())
    gates = add_gated_route(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"a": 0})
        b = await start(client, "/gated/b/b/1", gates["b"][0])
        c = await start(client, "/gated/c/a/1", gates["c"][0])
        d = await start(client, "/gated/d/a/2", gates["d"][0])
        gates["c"][1].set()
        await bounded(c)  # a = 1

        async def d_saves_in_between() -> None:
            gates["d"][1].set()
            await bounded(asyncio.shield(d))  # a = 2, merged onto a = 1

        hook_update(app, d_saves_in_between)
        gates["b"][1].set()  # b fails, reloads (a = 1), and before its retry d writes a = 2
        await bounded(b)
        assert await (await client.get("/get")).get_json() == {"a": 2, "b": 1}


async def test_a_slow_login_does_not_undo_a_logout(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    gates = add_gated_route(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"user": "ada"})
        login = await start(client, "/gated/b/user/regenerate", gates["b"][0])
        assert session_cookie(await client.post("/clear")) == ""
        gates["b"][1].set()
        response = await bounded(login)
        assert session_cookie(response) is None  # no new ID for a logged-out session
        assert await stored_rows(app) == []


async def test_a_slow_request_does_not_delete_the_cookie_a_login_just_set(
    make_app: AppFactory,
) -> None:
    app = add_routes(make_app())
    gates = add_gated_route(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"n": 1})
        slow = await start(client, "/gated/b/n/2", gates["b"][0])
        login = await client.post("/login", json={"user": "ada"})
        new_id = session_cookie(login)
        assert new_id
        gates["b"][1].set()
        response = await bounded(slow)
        assert session_cookie(response) is None
        assert await (await client.get("/get/user")).get_json() == {"value": "ada"}


async def test_regenerate_merges_a_concurrent_change_of_the_old_row(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    gates = add_gated_route(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"cart": {"tea": 1}})
        login = await start(client, "/gated/b/user/regenerate", gates["b"][0])
        await client.post("/cart/mug")  # changes the row the login will retire
        gates["b"][1].set()
        await bounded(login)
        data = await (await client.get("/get")).get_json()
        assert data == {"cart": {"tea": 1, "mug": 1}, "user": "logged-in"}
        assert len(await stored_rows(app)) == 1


async def test_regenerate_keeps_the_absolute_deadline(make_app: AppFactory, clock: Any) -> None:
    app = add_routes(make_app(SESSION_ABSOLUTE_TIMEOUT=1000, SESSION_TOUCH_INTERVAL=0))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"n": 1})
        clock.advance(900)
        await client.post("/login", json={"user": "ada"})
        clock.advance(100)
        assert await (await client.get("/get")).get_json() == {}


async def test_the_first_write_creates_the_table_without_a_start_up(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    client = app.test_client()  # no test_app(): before_serving never ran
    try:
        response = await client.get("/visits")
        assert await response.get_json() == {"visits": 1}
        assert len(await stored_rows(app)) == 1
    finally:
        await store_of(app).close()


async def test_shutdown_waits_for_a_save_in_flight(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    store = store_of(app)
    original = store.update
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_update(*args: Any, **kwargs: Any) -> bool:
        entered.set()
        await release.wait()
        return await original(*args, **kwargs)

    test_app = app.test_app()
    await test_app.startup()
    client = test_app.test_client()
    await client.get("/visits")
    store.update = slow_update  # type: ignore[method-assign]
    request = asyncio.ensure_future(client.get("/visits"))
    await bounded(entered.wait())
    request.cancel()  # the client went away; the save goes on
    shutdown = asyncio.ensure_future(test_app.shutdown())
    for _ in range(50):
        await asyncio.sleep(0)
    assert not shutdown.done()  # waiting for the save
    release.set()
    await bounded(shutdown)
    store.update = original  # type: ignore[method-assign]
    [row] = await stored_rows(app)
    assert row.version == 2
    await store.close()


async def test_a_lone_surrogate_is_refused_cleanly(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = add_routes(make_app(TESTING=False))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with caplog.at_level(logging.ERROR):
            response = await client.post(
                "/set", data='{"name": "\\ud800"}', headers={"Content-Type": "application/json"}
            )
        assert response.status_code == 500
        assert await stored_rows(app) == []
    errors = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert errors and all(isinstance(error, SessionNotSerializable) for error in errors)
