"""Step-up authentication: ``session.authenticated_at`` is stamped at the login (the
binding at SESSION_USER_KEY), survives new IDs and merges, cannot be set by assigning a
key, moves with ``mark_authenticated()``; ``@recent_authentication_required`` answers 401,
or the app's own answer. On SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from quart import Quart, jsonify, redirect, request

from quartsess import (
    ConfigurationError,
    Session,
    recent_authentication_required,
    session,
)
from tests.conftest import AppFactory, FakeClock
from tests.support import add_gated_route, add_routes, start
from tests.test_user_sessions import add_user_routes

TEN_MINUTES = timedelta(minutes=10)


def step_up_app(make_app: AppFactory, **config: Any) -> Quart:
    app = add_user_routes(add_routes(make_app(SESSION_PRUNE_INTERVAL=0, **config)))

    @app.get("/authenticated-at")
    async def authenticated_at() -> Any:
        stamp = session.authenticated_at
        return jsonify(at=None if stamp is None else stamp.timestamp())

    @app.post("/confirm")
    async def confirm() -> Any:
        session.mark_authenticated()  # the app checked the password again
        return jsonify(ok=True)

    @app.post("/forge")
    async def forge() -> Any:
        session["_authenticated_at"] = 4_102_444_800  # 2100: an app (or attacker) tries
        return jsonify(ok=True)

    @app.post("/sensitive")
    @recent_authentication_required(TEN_MINUTES)
    async def sensitive() -> Any:
        return jsonify(done=True)

    @app.post("/sensitive-seconds")
    @recent_authentication_required(60)
    def sensitive_seconds() -> Any:  # a plain view works too
        return jsonify(done=True)

    return app


async def stamp_of(client: Any) -> float | None:
    at: float | None = (await (await client.get("/authenticated-at")).get_json())["at"]
    return at


async def test_the_login_stamps_the_time_and_a_new_id_keeps_it(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = step_up_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"cart": {}})
        assert await stamp_of(client) is None  # anonymous
        clock.advance(30)
        await client.post("/seed-login/ada")
        assert await stamp_of(client) == int(clock())
        logged_in = int(clock())
        clock.advance(30)
        await client.post("/login", json={"user": "x"})  # a regenerate(): a new ID
        assert await stamp_of(client) == logged_in
        assert "_authenticated_at" not in await (await client.get("/get")).get_json()
        clock.advance(30)
        await client.post("/seed-login/bob")  # another user: a new login
        assert await stamp_of(client) == int(clock())
        await client.post("/seed-logout")  # no user: no stamp
        assert await stamp_of(client) is None


async def test_the_stamp_cannot_be_assigned_and_mark_authenticated_moves_it(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = step_up_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/seed-login/ada")
        logged_in = int(clock())
        await client.post("/forge")
        assert await stamp_of(client) == logged_in
        clock.advance(600)
        await client.post("/confirm")
        assert await stamp_of(client) == logged_in + 600


async def test_the_stamp_survives_a_concurrent_merge(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = step_up_app(make_app)
    gates = add_gated_route(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/seed-login/ada")
        logged_in = int(clock())
        clock.advance(100)
        # Loaded before the confirmation, saved after it: merged onto the confirmed row.
        slow = await start(client, "/gated/b/cart/1", gates["b"][0])
        await client.post("/confirm")
        gates["b"][1].set()
        assert (await slow).status_code == 200
        assert await stamp_of(client) == logged_in + 100


async def test_recent_authentication_required_answers_401_or_the_apps_answer(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = step_up_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.post("/sensitive")).status_code == 401  # never authenticated
        await client.post("/set", json={"cart": {}})
        assert (await client.post("/sensitive")).status_code == 401  # anonymous
        await client.post("/seed-login/ada")
        assert (await client.post("/sensitive")).status_code == 200
        assert (await client.post("/sensitive-seconds")).status_code == 200
        clock.advance(61)
        assert (await client.post("/sensitive-seconds")).status_code == 401
        assert (await client.post("/sensitive")).status_code == 200
        clock.advance(540)
        refused = await client.post("/sensitive")
        assert refused.status_code == 401
        assert "confirm your password" in await refused.get_data(as_text=True)
        await client.post("/confirm")
        assert (await client.post("/sensitive")).status_code == 200

        extension: Session = app.extensions["quartsess"]

        @extension.recent_authentication_handler
        async def confirm_first() -> Any:
            return redirect(f"/confirm-password?next={request.path}")

        clock.advance(601)
        answer = await client.post("/sensitive")
        assert answer.status_code == 302
        assert answer.headers["Location"] == "/confirm-password?next=/sensitive"


async def test_the_users_sessions_list_when_each_authenticated(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = step_up_app(make_app)
    async with app.test_app() as test_app:
        laptop, phone = test_app.test_client(), test_app.test_client()
        await laptop.post("/seed-login/ada")
        clock.advance(300)
        await phone.post("/seed-login/ada")
        clock.advance(300)
        await laptop.post("/confirm")
        extension: Session = app.extensions["quartsess"]
        found = {
            info.handle: info.authenticated_at for info in await extension.user_sessions("ada")
        }
        assert sorted(found.values()) == [
            datetime.fromtimestamp(int(clock()) - 300, UTC),
            datetime.fromtimestamp(int(clock()), UTC),
        ]


def test_max_age_must_be_a_positive_duration() -> None:
    for wrong in (0, -5, float("nan"), "600", True):
        with pytest.raises(ConfigurationError, match="max_age"):
            recent_authentication_required(wrong)  # type: ignore[arg-type]


async def test_concurrent_confirmations_do_not_crash(make_app: AppFactory) -> None:
    app = step_up_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/seed-login/ada")
        answers = await asyncio.gather(*(client.post("/confirm") for _ in range(10)))
        assert [a.status_code for a in answers] == [200] * 10


async def test_a_login_that_clears_the_session_first_is_stamped(
    make_app: AppFactory, clock: FakeClock
) -> None:
    # Flask's tutorial login: session.clear(), then the user, even the same one again.
    app = step_up_app(make_app)

    @app.post("/tutorial-login")
    async def tutorial_login() -> Any:
        session.clear()
        session["user_id"] = "ada"
        return jsonify(ok=True)

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/tutorial-login")
        assert await stamp_of(client) == int(clock())
        clock.advance(900)
        await client.post("/tutorial-login")  # the same user logs in again
        assert await stamp_of(client) == int(clock())
