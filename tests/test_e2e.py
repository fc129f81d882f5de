"""End to end: the sample app in a real hypercorn process (hypercorn.toml, two workers),
driven over HTTP with a cookie-keeping client: on one SQLite file, on PostgreSQL, on MariaDB.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import wsproto
import wsproto.events as ws_events

from tests.conftest import require_server
from tests.servers import Server, hypercorn_server, server_env, stop
from tests.tables import drop_tables_of, unique_table

COOKIE = "quartsess_demo"
TOKEN_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
TOKEN_META = re.compile(r'name="csrf-token" content="([^"]+)"')
VISITS = re.compile(r'<output id="visits" aria-live="polite">(\d+)</output>')


ServerFactory = Callable[[dict[str, str], str], Server]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers with ``serve(env, name)``; every one is stopped at teardown."""
    with ExitStack() as running:

        def start(env: dict[str, str], name: str) -> Server:
            return running.enter_context(hypercorn_server(env, tmp_path / f"{name}.log"))

        yield start


# -- a cookie-keeping HTTP client and a tiny websocket client ---------------------------


def new_client(server: Server) -> httpx.AsyncClient:
    # No keep-alive: every request opens a new connection, so the two workers share them.
    return httpx.AsyncClient(
        base_url=server.url,
        timeout=10,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def token_from(client: httpx.AsyncClient, path: str) -> str:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    match = TOKEN_FIELD.search(response.text) or TOKEN_META.search(response.text)
    assert match is not None
    return match.group(1)


async def visits(client: httpx.AsyncClient) -> int:
    response = await client.get("/visits")
    assert response.status_code == 200, response.text
    match = VISITS.search(response.text)
    assert match is not None
    return int(match.group(1))


async def websocket_call(server: Server, cookie: str, message: dict[str, Any]) -> Any:
    """Send one message to /ws/visits with the session cookie; return the JSON answer
    (the handler stores the session's change before it answers), then close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    host = f"127.0.0.1:{server.port}"
    request = ws_events.Request(
        host=host,
        target="/ws/visits",
        extra_headers=[(b"origin", f"http://{host}".encode()), (b"cookie", cookie.encode())],
    )
    writer.write(connection.send(request))
    answer: Any = None
    try:
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(65536)
                if not data:
                    return answer
                connection.receive_data(data)
                for event in connection.events():
                    if isinstance(event, ws_events.AcceptConnection):
                        writer.write(connection.send(ws_events.TextMessage(json.dumps(message))))
                    elif isinstance(event, ws_events.TextMessage):
                        return json.loads(event.data)
                    elif isinstance(event, ws_events.CloseConnection):
                        writer.write(connection.send(event.response()))
                        return answer
                    elif isinstance(event, ws_events.RejectConnection):
                        return {"rejected": event.status_code}
                await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


# -- the user journey -------------------------------------------------------------------


async def journey(server: Server) -> str:
    """Everything a visitor does, over real HTTP; returns the logged-in session cookie."""
    async with new_client(server) as client:
        home = await client.get("/")
        assert home.status_code == 200
        assert '<dd id="login-state">No</dd>' in home.text
        assert "set-cookie" not in home.headers

        assert [await visits(client) for _ in range(3)] == [1, 2, 3]

        token = await token_from(client, "/login")
        before = client.cookies[COOKIE]
        bad = await client.post(
            "/login", data={"username": "alice", "password": "guess", "csrf_token": token}
        )
        assert bad.status_code == 200
        assert "Unknown username or wrong password." in bad.text
        assert client.cookies[COOKIE] == before
        assert (await client.post("/login", data={"username": "alice"})).status_code == 400

        good = await client.post(
            "/login", data={"username": "alice", "password": "wonderland", "csrf_token": token}
        )
        assert good.status_code == 302
        assert good.headers["location"] == "/dashboard"
        assert client.cookies[COOKIE] != before
        dashboard = await client.get("/dashboard")
        assert dashboard.status_code == 200
        assert "Hello, Alice Liddell" in dashboard.text

        token = await token_from(client, "/cart/")
        for product in ("tea", "tea", "mug"):
            added = await client.post(
                "/cart/add", data={"product_id": product, "csrf_token": token}
            )
            assert added.status_code == 302
        missing = await client.post(
            "/cart/remove", data={"product_id": "kettle", "csrf_token": token}
        )
        assert missing.status_code == 404
        cart = await client.get("/cart/")
        assert 'id="cart-total">€25.00<' in cart.text

        # The websocket changes the session; the next page load sees it.
        # Every cookie, as a browser sends: the session's and the CSRF nonce's.
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        count = await visits(client)
        meta_token = await token_from(client, "/dashboard")
        reply = await websocket_call(server, cookie, {"action": "visit", "csrf_token": meta_token})
        assert reply == {"visits": count + 1}
        assert await visits(client) == count + 2

        # Concurrent writes to one session, spread over both workers: none fails. Six, as
        # a browser opens at most six connections to one host.
        results = await asyncio.gather(*(client.get("/visits") for _ in range(6)))
        assert [response.status_code for response in results] == [200] * 6
        assert await visits(client) > count + 2
        assert (await client.get("/dashboard")).status_code == 200
        return client.cookies[COOKIE]


async def until_both_workers_served(server: Server, session_id: str) -> None:
    """Send the session's requests in concurrent batches until both workers have served
    it. Which worker accepts a connection is the kernel's choice, and under load one may
    take every connection of a whole journey; a bounded number of batches ends this."""
    async with new_client(server) as client:
        client.cookies.set(COOKIE, session_id, domain="127.0.0.1")
        for _ in range(50):
            if len(set(re.findall(r"<(\d+)>", server.output()))) >= 2:
                return
            pages = await asyncio.gather(*(client.get("/dashboard") for _ in range(8)))
            assert [page.status_code for page in pages] == [200] * 8


async def log_out_and_check(server: Server, session_id: str) -> None:
    async with new_client(server) as client:
        client.cookies.set(COOKIE, session_id, domain="127.0.0.1")
        token = await token_from(client, "/dashboard")
        refused = await client.post("/logout")
        assert refused.status_code == 400
        logged_out = await client.post("/logout", data={"csrf_token": token})
        assert logged_out.status_code == 302
        assert logged_out.headers["location"] == "/?logged_out=1"
        assert COOKIE not in client.cookies
        assert "Max-Age=0" in logged_out.headers["set-cookie"] or (
            "Expires=Thu, 01 Jan 1970" in logged_out.headers["set-cookie"]
        )
        # Even replaying the old ID does not get back in.
        client.cookies.set(COOKIE, session_id, domain="127.0.0.1")
        dashboard = await client.get("/dashboard")
        assert dashboard.status_code == 302
        assert dashboard.headers["location"].startswith("/login")


async def assert_still_logged_in(server: Server, session_id: str) -> None:
    async with new_client(server) as client:
        client.cookies.set(COOKIE, session_id, domain="127.0.0.1")
        dashboard = await client.get("/dashboard")
        assert dashboard.status_code == 200, dashboard.text
        assert "Hello, Alice Liddell" in dashboard.text
        assert 'id="cart-total">€25.00<' in (await client.get("/cart/")).text


# -- the tests --------------------------------------------------------------------------


async def test_two_workers_on_one_sqlite_file_and_a_restart(
    tmp_path: Path, serve: ServerFactory
) -> None:
    instance = tmp_path / "instance"
    env = server_env(instance)  # no secret key, no database URL: all from instance/
    first = serve(env, "first")
    session_id = await journey(first)
    await until_both_workers_served(first, session_id)
    stop(first)
    output = first.output()
    assert len(set(re.findall(r"<(\d+)>", output))) == 2, output  # both workers served
    assert "Traceback" not in output
    assert (instance / "quartsess.sqlite3").exists()
    assert (instance / "secret_key").stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in instance.iterdir() if path.name.startswith(".")) == []

    # Same instance folder after a restart: same secret key, same sessions.
    second = serve(env, "second")
    await assert_still_logged_in(second, session_id)
    await log_out_and_check(second, session_id)


@pytest.fixture(params=["postgresql", "mariadb"])
async def server_table(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    url = await require_server(request.param)
    table = unique_table("qs_e2e")
    yield url, table
    await drop_tables_of(url, table)


async def test_two_workers_on_a_database_server(
    tmp_path: Path, server_table: tuple[str, str], serve: ServerFactory
) -> None:
    url, table = server_table
    env = server_env(
        tmp_path / "instance",
        QUARTSESS_DB_URL=url,
        QUARTSESS_TABLE=table,
        QUARTSESS_SECRET_KEY="e2e-secret-key-0123456789abcdef",
    )
    server = serve(env, "server")
    session_id = await journey(server)
    await assert_still_logged_in(server, session_id)
    await log_out_and_check(server, session_id)
    assert "Traceback" not in server.output()
    assert not (tmp_path / "instance" / "quartsess.sqlite3").exists()
