"""Sessions in a header for API clients (``SESSION_HEADER_NAME``): a request that carries
the header is served by the session whose ID it holds, exactly as the cookie would be;
a response that creates or renews the session carries the new ID in that header and sets
no cookie; a logout answers with an empty header; a request with neither header nor
cookie stays a cookie request. On SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart

from quartsess import ConfigurationError, Session
from tests.conftest import AppFactory, FakeClock
from tests.servers import hypercorn_server, server_env
from tests.support import add_routes, stored_rows
from tests.test_user_sessions import add_user_routes

HEADER = "X-Session-Token"


def header_app(make_app: AppFactory, **config: Any) -> Quart:
    return add_user_routes(
        add_routes(make_app(SESSION_HEADER_NAME=HEADER, SESSION_PRUNE_INTERVAL=0, **config))
    )


class ApiClient:
    """A client without a cookie jar: it keeps the session's ID from the header."""

    def __init__(self, test_app: Any) -> None:
        self.client = test_app.test_client()
        self.token = ""

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.client.cookie_jar = None  # never a cookie
        response = await self.client.open(
            path, method=method, headers={HEADER: self.token}, **kwargs
        )
        assert "Set-Cookie" not in response.headers, path
        if HEADER in response.headers:
            self.token = response.headers[HEADER]
        return response


async def test_a_client_with_only_the_header_logs_in_reads_writes_and_logs_out(
    make_app: AppFactory,
) -> None:
    app = header_app(make_app)
    async with app.test_app() as test_app:
        api = ApiClient(test_app)
        first = await api.request("GET", "/get/user_id")  # an empty header: a new session
        assert await first.get_json() == {"value": None}
        assert HEADER not in first.headers  # nothing stored, nothing sent
        stored = await api.request("POST", "/set", json={"cart": {"tea": 1}})
        assert len(api.token) == 43 and stored.headers[HEADER] == api.token
        assert HEADER in stored.headers["Vary"] and "Cookie" in stored.headers["Vary"]
        assert "private" in stored.headers["Cache-Control"]
        anonymous = api.token
        read = await api.request("GET", "/get/cart")
        assert await read.get_json() == {"value": {"tea": 1}}
        assert HEADER not in read.headers  # the same ID: not sent again
        assert HEADER in read.headers["Vary"]

        logged_in = await api.request("POST", "/seed-login/ada")
        assert api.token != anonymous  # renewed on a change of user, in the header
        assert logged_in.headers[HEADER] == api.token
        assert await (await api.request("GET", "/whoami")).get_json() == {"user": "ada"}
        api.token, new = anonymous, api.token  # the old ID is dead
        assert await (await api.request("GET", "/whoami")).get_json() == {"user": None}
        api.token = new

        out = await api.request("POST", "/clear")
        assert out.headers[HEADER] == ""  # logged out: an empty header
        assert await stored_rows(app) == []


async def test_a_revoked_header_session_ends_on_its_next_request(
    make_app: AppFactory,
) -> None:
    app = header_app(make_app)
    async with app.test_app() as test_app:
        api = ApiClient(test_app)
        await api.request("POST", "/seed-login/ada")
        extension: Session = app.extensions["quartsess"]
        assert await extension.revoke_user_sessions("ada") == 1
        assert await (await api.request("GET", "/whoami")).get_json() == {"user": None}


@pytest.mark.parametrize(
    "value", ["nonsense", "x" * 43, "a" * 43 + "\u00e9", " " * 5, "a" * 10_000, "Bearer abc"]
)
async def test_a_malformed_or_unknown_header_gets_a_fresh_session(
    make_app: AppFactory, value: str
) -> None:
    app = header_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.get("/get/user_id", headers={HEADER: value})
        assert response.status_code == 200
        assert await response.get_json() == {"value": None}
        stored = await client.post("/set", json={"a": 1}, headers={HEADER: value})
        assert stored.status_code == 200
        assert stored.headers[HEADER] != value and len(stored.headers[HEADER]) == 43
        assert "Set-Cookie" not in stored.headers


async def test_without_the_header_a_request_stays_a_cookie_request(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = header_app(make_app)
    async with app.test_app() as test_app:
        browser = test_app.test_client()
        stored = await browser.post("/set", json={"a": 1})
        assert "Set-Cookie" in stored.headers and HEADER not in stored.headers
        assert await (await browser.get("/get/a")).get_json() == {"value": 1}
        # A header wins over a cookie: the client said which it uses.
        cookie_session = await browser.get("/get/a", headers={HEADER: ""})
        assert await cookie_session.get_json() == {"value": None}


def test_the_header_name_is_checked(make_app: AppFactory) -> None:
    for wrong in ("Cookie", "set-cookie", "Authorization", "X Session", "", 5):
        with pytest.raises(ConfigurationError, match="SESSION_HEADER_NAME"):
            make_app(SESSION_HEADER_NAME=wrong)


async def test_an_api_client_on_two_hypercorn_workers(tmp_path: Path) -> None:
    """httpx without a cookie jar, every request a connection of its own."""
    env = server_env(
        tmp_path / "instance",
        QUARTSESS_SECRET_KEY="header-secret-0123456789abcdef012",
        QUARTSESS_DB_URL=f"sqlite+aiosqlite:///{tmp_path / 'sessions.sqlite3'}",
        QUARTSESS_HEADER_NAME=HEADER,
    )
    with hypercorn_server(
        env, tmp_path / "server.log", arguments=(), application="tests.liveapp:create_app()",
        ready_path="/health",
    ) as server:  # fmt: skip
        token = ""

        async def call(method: str, path: str) -> httpx.Response:
            nonlocal token
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                response = await client.request(method, path, headers={HEADER: token})
            assert "set-cookie" not in response.headers
            assert response.status_code == 200, response.text
            if HEADER in response.headers:
                token = response.headers[HEADER]
            return response

        await call("POST", "/login/ada")
        first = token
        assert len(first) == 43
        for _ in range(20):  # reads, on whichever worker takes the connection
            assert (await call("GET", "/pid")).json()["user"] == "ada"
        await call("POST", "/login/bob")  # a change of user: renewed, in the header
        assert token != first
        assert (await call("GET", "/pid")).json()["user"] == "bob"
        revoked = await call("POST", "/revoke/bob")
        assert revoked.json()["revoked"] == 1
        assert (await call("GET", "/pid")).json()["user"] is None
        token = "not-a-session-id"  # malformed: a fresh session, not a 500
        assert (await call("GET", "/pid")).json()["user"] is None
