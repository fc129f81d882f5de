"""From the browser's point of view, quartsess behaves like Quart's own cookie session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from quart import Quart, session
from quart.sessions import SessionMixin

from quartsess import ServerSessionInterface, Session
from quartsess.ids import hash_session_id
from tests.conftest import SECRET, AppFactory, FakeClock
from tests.support import StatementLog, add_routes, session_cookie, stored_rows

SCRIPT: list[tuple[str, str, Any]] = [
    ("get", "/get", None),
    ("get", "/visits", None),
    ("get", "/visits", None),
    ("post", "/set", {"name": "ada", "when": "now", "n": [1, 2, 3]}),
    ("get", "/get/name", None),
    ("post", "/basket/apple", None),
    ("post", "/basket/apple", None),
    ("post", "/basket/pear", None),
    ("post", "/pop/when", None),
    ("post", "/pop/missing", None),
    ("get", "/get", None),
    ("post", "/clear", None),
    ("get", "/get", None),
    ("get", "/visits", None),
]


def build(app: Quart) -> Quart:
    add_routes(app)

    @app.post("/basket/<item>")
    async def add_to_basket(item: str) -> dict[str, Any]:
        # Written for the cookie session, which must be told about nested changes.
        basket = session.setdefault("basket", {})
        basket[item] = basket.get(item, 0) + 1
        session.modified = True
        return {"basket": basket}

    return app


async def run_script(app: Quart) -> list[Any]:
    outputs = []
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for method, path, body in SCRIPT:
            response = await getattr(client, method)(path, json=body)
            outputs.append((response.status_code, await response.get_json()))
    return outputs


async def test_same_responses_as_the_cookie_session(make_app: AppFactory) -> None:
    cookie_app = build(Quart(__name__))
    cookie_app.config.update(SECRET_KEY=SECRET, TESTING=True)
    # Login regenerates the ID, which the cookie session cannot do; the rest is common.
    expected = await run_script(cookie_app)
    actual = await run_script(build(make_app()))
    assert actual == expected
    assert expected[-1] == (200, {"visits": 1})  # the clear really cleared


def expires_of(response: Any) -> str | None:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith("session="):
            return next(
                (p.split("=", 1)[1] for p in header.split("; ") if p.startswith("Expires=")), ""
            )
    return None


def route_ignoring_the_session(app: Quart) -> Quart:
    @app.get("/plain")
    async def plain() -> str:
        return "no session here"

    return app


async def test_a_permanent_session_cookie_slides_on_every_response(
    make_app: AppFactory, clock: FakeClock
) -> None:
    """SESSION_REFRESH_EACH_REQUEST (on by default), as Quart and Flask do it: a fresh
    expiry on every response, also one that never read the session; the row is written
    only when a touch is due."""
    app = route_ignoring_the_session(add_routes(make_app(SESSION_TOUCH_INTERVAL=60)))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/permanent")
        counter = StatementLog(app)
        first = await client.get("/plain")
        clock.advance(10)
        with counter:
            second = await client.get("/plain")
        assert counter.statements == ["load"]  # no write: the touch is not due yet
        assert expires_of(first) and expires_of(second)
        assert expires_of(first) != expires_of(second)  # 10 s later
        assert second.headers["Vary"] == "Cookie"
        assert "private" in second.headers["Cache-Control"]


async def test_without_refresh_each_request_the_cookie_is_sent_only_on_changes(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = route_ignoring_the_session(add_routes(make_app(SESSION_REFRESH_EACH_REQUEST=False)))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert expires_of(await client.post("/permanent"))
        clock.advance(120)  # a touch is due: the row is written, the cookie left alone
        response = await client.get("/plain")
        assert expires_of(response) is None
        assert "Vary" not in response.headers
        assert expires_of(await client.post("/set", json={"n": 1}))


class AlwaysSetCookie(ServerSessionInterface):
    def should_set_cookie(self, app: Quart, session: SessionMixin) -> bool:
        return True


class NeverRefreshCookie(ServerSessionInterface):
    def should_set_cookie(self, app: Quart, session: SessionMixin) -> bool:
        return session.new


class FixedExpiry(ServerSessionInterface):
    def get_expiration_time(self, app: Quart, session: SessionMixin) -> datetime | None:
        return datetime(2040, 1, 2, tzinfo=UTC)


async def test_should_set_cookie_and_get_expiration_time_overrides_are_honoured(
    db_url: str, table_name: str, clock: FakeClock
) -> None:
    def app_with(interface: type[ServerSessionInterface]) -> Quart:
        class CustomSession(Session):
            interface_class = interface

        app = Quart(__name__)
        app.config.update(
            SECRET_KEY=SECRET, SESSION_DB_URL=db_url, SESSION_TABLE=table_name, TESTING=True
        )
        CustomSession(app, clock=clock)
        return add_routes(app)

    async with app_with(AlwaysSetCookie).test_app() as test_app:
        client = test_app.test_client()
        await client.get("/visits")
        assert session_cookie(await client.get("/get/visits"))  # read-only, not permanent
    async with app_with(NeverRefreshCookie).test_app() as test_app:
        client = test_app.test_client()
        assert session_cookie(await client.get("/visits"))  # a new session: its cookie
        assert session_cookie(await client.get("/visits")) is None
    async with app_with(FixedExpiry).test_app() as test_app:
        client = test_app.test_client()
        await client.get("/visits")
        assert expires_of(await client.post("/permanent")) == "Mon, 02 Jan 2040 00:00:00 GMT"


async def test_clear_then_new_data_is_a_new_session(make_app: AppFactory) -> None:
    """Flask tutorials' login: ``session.clear()`` and then ``session["user_id"] = ...``
    stores the user under a new ID; the old ID (perhaps planted) is dead."""
    app = add_routes(make_app())

    @app.post("/tutorial-login")
    async def tutorial_login() -> dict[str, bool]:
        session.clear()
        session["user"] = "ada"
        return {"ok": True}

    async with app.test_app() as test_app:
        client = test_app.test_client()
        old = session_cookie(await client.get("/visits"))
        new = session_cookie(await client.post("/tutorial-login"))
        assert old and new and new != old
        assert [row.id_hash for row in await stored_rows(app)] == [hash_session_id(new)]
        assert await (await client.get("/get")).get_json() == {"user": "ada"}
        planted = test_app.test_client()
        planted.set_cookie("localhost", "session", old)
        assert await (await planted.get("/get")).get_json() == {}


async def test_a_session_made_non_permanent_gets_a_browser_session_cookie(
    make_app: AppFactory,
) -> None:
    app = add_routes(make_app())

    @app.post("/not-permanent")
    async def not_permanent() -> dict[str, bool]:
        session.permanent = False
        return {"ok": True}

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/visits")
        assert expires_of(await client.post("/permanent"))
        assert expires_of(await client.post("/not-permanent")) == ""  # sent, with no Expires
