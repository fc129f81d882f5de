"""Cookie flags, Vary and caching headers, permanent sessions, overridable helpers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from quart import Quart, Response, session

from quartsess import ServerSessionInterface, Session
from quartsess.interface import _forbid_shared_caching, _vary_on
from tests.conftest import AppFactory, FakeClock
from tests.support import add_routes, session_cookie, stored_rows


def set_cookie_header(response: object, name: str = "session") -> str:
    for header in response.headers.getlist("Set-Cookie"):  # type: ignore[attr-defined]
        if header.startswith(f"{name}="):
            return str(header)
    raise AssertionError(f"no Set-Cookie for {name}")


async def test_new_session_cookie_flags_and_headers(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/visits")
    header = set_cookie_header(response)
    assert "HttpOnly" in header
    assert "SameSite=Lax" in header
    assert "Path=/" in header
    assert "Expires" not in header  # not permanent: a browser-session cookie
    assert response.headers["Vary"] == "Cookie"
    assert "private" in response.headers["Cache-Control"]
    assert "public" not in response.headers["Cache-Control"]


async def test_a_page_that_ignores_the_session_gets_no_vary_and_no_cookie(
    make_app: AppFactory,
) -> None:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/visits")
        response = await client.get("/static-page")
    assert "Vary" not in response.headers
    assert session_cookie(response) is None


async def test_vary_follows_the_sessions_own_reads_not_the_frameworks_accessed_flag(
    make_app: AppFactory,
) -> None:
    # Quart 0.23 sets `accessed` whenever its context hands out the session, also before
    # saving; this does the same on any Quart version.
    app = add_routes(make_app())

    @app.after_request
    async def mark_accessed(response: Response) -> Response:
        session._get_current_object().accessed = True  # type: ignore[attr-defined, unused-ignore]
        return response

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/visits")
        response = await client.get("/static-page")
        assert "Vary" not in response.headers
        assert (await client.get("/visits")).headers["Vary"] == "Cookie"


async def test_configured_cookie_settings_are_used(make_app: AppFactory) -> None:
    app = add_routes(
        make_app(
            SESSION_COOKIE_NAME="sid",
            SESSION_COOKIE_SAMESITE="Strict",
            SESSION_COOKIE_SECURE=True,
            SESSION_COOKIE_DOMAIN="example.test",
            SESSION_COOKIE_PATH="/app",
        )
    )
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/visits")
    header = set_cookie_header(response, "sid")
    for flag in ("SameSite=Strict", "Secure", "Domain=example.test", "Path=/app"):
        assert flag in header


async def test_permanent_session_cookie_expires_with_the_row(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = add_routes(make_app(SESSION_IDLE_TIMEOUT=3600, SESSION_TOUCH_INTERVAL=60))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/visits")
        response = await client.post("/permanent")
        [row] = await stored_rows(app)
        expires = datetime.fromtimestamp(row.expires_at, UTC).strftime("%d %b %Y %H:%M:%S")
        assert "Expires=" in set_cookie_header(response)
        assert expires in set_cookie_header(response)

        clock.advance(10)
        early = await client.get("/get/visits")  # no touch yet, but the cookie slides
        assert (await stored_rows(app))[0].expires_at == row.expires_at
        assert "Expires=" in set_cookie_header(early) and expires not in set_cookie_header(early)
        clock.advance(60)
        refreshed = await client.get("/get/visits")  # touch: the cookie follows the row
        [row] = await stored_rows(app)
        expires = datetime.fromtimestamp(row.expires_at, UTC).strftime("%d %b %Y %H:%M:%S")
        assert expires in set_cookie_header(refreshed)


class SecureAlways(ServerSessionInterface):
    def get_cookie_secure(self, app: Quart) -> bool:
        return True


class SecureSession(Session):
    interface_class = SecureAlways


async def test_apps_can_override_cookie_helpers(db_url: str, table_name: str) -> None:
    app = add_routes(Quart(__name__))
    app.config.update(
        SECRET_KEY="k" * 32, SESSION_DB_URL=db_url, SESSION_TABLE=table_name, TESTING=True
    )
    SecureSession(app)
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/visits")
    assert "Secure" in set_cookie_header(response)


@pytest.mark.parametrize(
    ("vary", "cache_control", "varies_on", "directives"),
    [
        ([], [], {"cookie"}, {"private"}),
        (
            ["Accept-Encoding"],
            ["public, max-age=60"],
            {"accept-encoding", "cookie"},
            {"private", "max-age=60"},
        ),
        (
            ["accept-encoding, COOKIE"],
            ["no-transform"],
            {"accept-encoding", "cookie"},
            {"no-transform", "private"},
        ),
        (
            ["Accept-Encoding", "Origin"],
            ["public", "no-store"],
            {"accept-encoding", "origin", "cookie"},
            {"private", "no-store"},
        ),
        (["*"], ["private"], {"*"}, {"private"}),
    ],
)
def test_a_response_setting_the_cookie_varies_on_it_and_is_private_whatever_it_had(
    vary: list[str], cache_control: list[str], varies_on: set[str], directives: set[str]
) -> None:
    """The headers quartsess writes next to a session cookie: ``Vary`` names Cookie once,
    keeping every other field the app named, and ``Cache-Control`` forbids shared caches,
    keeping the app's other directives (from every header line)."""
    response = Response("hi")
    for value in vary:
        response.headers.add("Vary", value)
    for value in cache_control:
        response.headers.add("Cache-Control", value)
    _vary_on(response, ("Cookie",))
    _vary_on(response, ("Cookie",))  # a second call (the save after a read) adds nothing
    _forbid_shared_caching(response)
    tokens = [
        token.strip().lower()
        for value in response.headers.getlist("Vary")
        for token in value.split(",")
    ]
    assert set(tokens) == varies_on
    assert tokens.count("cookie") <= 1
    [line] = response.headers.getlist("Cache-Control")
    assert {directive.strip() for directive in line.split(",")} == directives


@pytest.mark.parametrize(
    ("app_vary", "expected"),
    [
        ((), ["Cookie"]),
        (("Accept-Encoding", "Accept-Language"), ["Accept-Encoding, Accept-Language, Cookie"]),
        (("Accept-Encoding", "Cookie"), ["Accept-Encoding, Cookie"]),
    ],
)
async def test_vary_names_cookie_on_the_apps_own_vary_line_as_quart_does(
    make_app: AppFactory, app_vary: tuple[str, ...], expected: list[str]
) -> None:
    """Flask's test_session_vary_cookie: a view that sets its own ``Vary`` and uses the
    session gets one header line naming both (caches that read only the first line see
    Cookie too); a response with no ``Vary`` gets ``Cookie`` alone."""
    app = make_app()

    @app.get("/vary")
    async def vary() -> Response:
        session["visits"] = session.get("visits", 0) + 1
        response = Response("ok")
        response.vary.update(app_vary)
        return response

    async with app.test_app() as test_app:
        client = test_app.test_client()
        for _ in range(2):  # a new session (cookie set), then a returning one (only read)
            response = await client.get("/vary")
            assert response.headers.getlist("Vary") == expected


def test_several_vary_lines_of_the_app_become_one_naming_cookie() -> None:
    response = Response("hi")
    response.headers.add("Vary", "Accept-Encoding")
    response.headers.add("Vary", "Origin, ")
    _vary_on(response, ("Cookie",))
    assert response.headers.getlist("Vary") == ["Accept-Encoding, Origin, Cookie"]
