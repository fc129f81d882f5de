"""Websockets enforce their session: a websocket whose session ends elsewhere (revoked,
logged out in another tab, renewed by a login, past a deadline) is closed with code 1008
by the worker's periodic check; a live session's websocket stays open and keeps its
session alive; an outage during a check closes nothing. In one process, on SQLite,
PostgreSQL and MariaDB (tests/test_live_hypercorn.py does it across two workers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from quart import Quart, websocket
from quart.testing import QuartClient
from quart.testing.connections import TestWebsocketConnection as QuartWebsocket
from sqlalchemy import text

from quartsess import Session, session
from quartsess.live import CLOSE_CODE
from tests.conftest import AppFactory, FakeClock
from tests.support import execute, stored_rows
from tests.test_user_sessions import add_routes, add_user_routes

CHECK = 0.02  # seconds between checks: fast tests, still one statement per check


@dataclass(frozen=True)
class Closed:
    """The server closed the websocket with this code."""

    code: int


class WebsocketClient(QuartWebsocket):
    """Quart's test websocket, with the server's close code as a message.

    Quart 0.22 raises its own ``WebsocketDisconnectError(code)`` on a close and 0.23
    drops the code; this keeps the code on both.
    """

    async def _asgi_send(self, message: Any) -> None:
        if message["type"] == "websocket.close":
            await self._receive_queue.put(Closed(int(message.get("code", 1000))))
            return
        await super()._asgi_send(message)


class LiveClient(QuartClient):
    websocket_connection_class = WebsocketClient


def live_app(make_app: AppFactory, **config: Any) -> Quart:
    config.setdefault("SESSION_WEBSOCKET_CHECK_INTERVAL", CHECK)
    app = add_user_routes(add_routes(make_app(**config)))
    app.test_client_class = LiveClient

    @app.websocket("/ws")
    async def echo() -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            await websocket.send(f"{message}:{session.get('user_id')}")

    return app


def parts(app: Quart) -> Any:
    extension: Session = app.extensions["quartsess"]
    return extension.parts_for(app)


async def checks_pass(app: Quart, count: int = 2) -> None:
    """Wait (bounded) until ``count`` more checks of the open websockets have run."""
    live = parts(app).live
    async with asyncio.timeout(5):
        for _ in range(count):
            await live.next_check()


async def closed_with(ws: WebsocketClient) -> int:
    """The close code the server sends (bounded wait)."""
    async with asyncio.timeout(5):
        while True:
            message: object = await ws.receive()
            if isinstance(message, Closed):
                return message.code


async def answers(ws: WebsocketClient, message: str) -> str:
    await ws.send(message)
    async with asyncio.timeout(5):
        reply = await ws.receive()
    assert isinstance(reply, str)
    return reply


@asynccontextmanager
async def logged_in(client: Any, user: str) -> AsyncIterator[WebsocketClient]:
    await client.post(f"/seed-login/{user}")
    async with client.websocket("/ws") as ws:
        assert await answers(ws, "hello") == f"hello:{user}"
        yield ws


async def test_a_revoked_session_closes_its_websocket(make_app: AppFactory) -> None:
    app = live_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with logged_in(client, "ada") as ws:
            ext: Session = app.extensions["quartsess"]
            assert await ext.revoke_user_sessions("ada") == 1
            assert await closed_with(ws) == CLOSE_CODE
        assert len(parts(app).live) == 0  # the handler ended: nothing left to check


async def test_a_logout_in_another_tab_closes_the_websocket(make_app: AppFactory) -> None:
    app = live_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with logged_in(client, "ada") as ws:
            await client.post("/clear")  # the same cookie, another tab
            assert await closed_with(ws) == CLOSE_CODE


async def test_a_login_elsewhere_closes_the_websocket_of_the_old_id(
    make_app: AppFactory,
) -> None:
    app = live_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with logged_in(client, "ada") as ws:
            await client.post("/seed-login/bob")  # a new user: a new ID, the old row gone
            assert await closed_with(ws) == CLOSE_CODE


async def test_a_session_past_its_absolute_deadline_is_closed_and_ended_once(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = live_app(make_app, SESSION_ABSOLUTE_TIMEOUT=600)
    ended: list[dict[str, Any]] = []

    async def on_ended(sender: Quart, **fields: Any) -> None:
        ended.append(fields)

    from quartsess.signals import session_ended

    session_ended.connect(on_ended, sender=app, weak=False)
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            async with logged_in(client, "ada") as ws:
                clock.advance(601)
                assert await closed_with(ws) == CLOSE_CODE
            assert await stored_rows(app) == []
    finally:
        session_ended.disconnect(on_ended, sender=app)
    assert [(e["user"], e["reason"]) for e in ended] == [("ada", "expired")]


async def test_a_live_sessions_websocket_stays_open_and_keeps_it_alive(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = live_app(make_app, SESSION_IDLE_TIMEOUT=600, SESSION_TOUCH_INTERVAL=60)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with logged_in(client, "ada") as ws:
            for _ in range(5):  # 25 idle minutes without a request: the socket is use
                clock.advance(300)
                await checks_pass(app)
                assert await answers(ws, "still") == "still:ada"
            [row] = await stored_rows(app)
            assert row.touched_at >= int(clock()) - 300
            # A request after all that still finds the session.
            assert await (await client.get("/whoami")).get_json() == {"user": "ada"}


async def test_an_outage_during_a_check_closes_nothing(
    make_app: AppFactory, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = live_app(make_app)
    hidden = f"{table_name}_away"
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with logged_in(client, "ada") as ws:
            with caplog.at_level(logging.INFO, logger="quartsess"):
                await execute(app, text(f"ALTER TABLE {table_name} RENAME TO {hidden}"))
                await checks_pass(app, 5)
                assert await answers(ws, "during") == "during:ada"
                await execute(app, text(f"ALTER TABLE {hidden} RENAME TO {table_name}"))
                await checks_pass(app, 2)
            assert await answers(ws, "after") == "after:ada"
    failures = [r for r in caplog.records if "could not be checked" in r.getMessage()]
    assert len(failures) == 1  # logged once, not once per check
    assert any("checked again" in r.getMessage() for r in caplog.records)


async def test_a_worker_without_websockets_runs_no_check(make_app: AppFactory) -> None:
    app = live_app(make_app)
    live = parts(app).live
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with logged_in(client, "ada") as ws:
            assert await answers(ws, "x") == "x:ada"
            assert live._task is not None and not live._task.done()
        async with asyncio.timeout(5):  # the checker ends once the last websocket is gone
            await asyncio.shield(live._task)
        await client.post("/seed-login/bob")  # requests alone start no checker
        assert live._task.done()


async def test_checking_can_be_turned_off(make_app: AppFactory) -> None:
    app = live_app(make_app, SESSION_WEBSOCKET_CHECK_INTERVAL=None)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with logged_in(client, "ada") as ws:
            ext: Session = app.extensions["quartsess"]
            await ext.revoke_user_sessions("ada")
            assert await answers(ws, "open") == "open:ada"
            assert len(parts(app).live) == 0


async def test_a_key_rotation_that_rehashes_the_user_closes_nothing(
    make_app: AppFactory, table_name: str
) -> None:
    # rotate-keys rewrites each row's user hash under the newest key; a websocket opened
    # under the older one still belongs to the same user.
    app = live_app(make_app, SECRET_KEY_FALLBACKS=["the-old-secret-0123456789abcdef0"])
    owners = parts(app).owners
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with logged_in(client, "ada") as ws:
            other_key_hash = owners.user_hashes("ada")[1]
            await execute(app, text(f"UPDATE {table_name} SET user_hash = '{other_key_hash}'"))  # noqa: S608
            await checks_pass(app, 3)
            assert await answers(ws, "still") == "still:ada"
            await execute(app, text(f"UPDATE {table_name} SET user_hash = '{'f' * 64}'"))  # noqa: S608
            assert await closed_with(ws) == CLOSE_CODE  # another user: closed
