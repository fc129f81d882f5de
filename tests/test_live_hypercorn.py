"""Websockets enforce their session under real hypercorn with two workers sharing the
database: a revocation served by the other worker, a logout in another tab, a login
elsewhere and the absolute timeout close the websocket with code 1008 within about one
check interval; a live session's websocket stays open; a database outage during the
checks closes nothing (PostgreSQL behind a proxy that is switched off and on)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import wsproto
import wsproto.events as ws_events
from sqlalchemy.engine import make_url

from tests.conftest import require_server
from tests.proxy import ThreadedProxy
from tests.servers import Server, hypercorn_server, server_env
from tests.tables import drop_tables_of, unique_table

CHECK = 0.2
CLOSED_WITHIN = 5.0  # seconds: a check interval and a statement, with room for a slow CI


class WsClient:
    """A websocket client (wsproto over asyncio streams) that keeps its connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.close_code: int | None = None

    async def _next(self) -> Any:
        while self.events.empty():
            data = await self.reader.read(65536)
            if not data:
                await self.events.put(("eof", None))
                break
            self.connection.receive_data(data)
            for event in self.connection.events():
                if isinstance(event, ws_events.CloseConnection):
                    self.close_code = event.code
                    self.writer.write(self.connection.send(event.response()))
                await self.events.put(event)
        return await self.events.get()

    async def ask(self, message: str) -> dict[str, Any]:
        self.writer.write(self.connection.send(ws_events.TextMessage(message)))
        await self.writer.drain()
        async with asyncio.timeout(5):
            event = await self._next()
        assert isinstance(event, ws_events.TextMessage), event
        answer: dict[str, Any] = json.loads(event.data)
        return answer

    async def closed(self) -> tuple[int | None, float]:
        """The close code the server sent, and how long it took to come."""
        started = time.monotonic()
        async with asyncio.timeout(CLOSED_WITHIN):
            while True:
                event = await self._next()
                if isinstance(event, ws_events.CloseConnection) or event == ("eof", None):
                    return self.close_code, time.monotonic() - started


@asynccontextmanager
async def websocket_of(server: Server, cookie: str) -> AsyncIterator[WsClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client = WsClient(reader, writer)
    host = f"127.0.0.1:{server.port}"
    request = ws_events.Request(
        host=host, target="/ws", extra_headers=[(b"cookie", cookie.encode())]
    )
    writer.write(client.connection.send(request))
    try:
        async with asyncio.timeout(5):
            accepted = await client._next()
        assert isinstance(accepted, ws_events.AcceptConnection), accepted
        yield client
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


def new_client(server: Server, *, keep_alive: bool = False) -> httpx.AsyncClient:
    limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
    return httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits)


def cookie_header(client: httpx.AsyncClient) -> str:
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


@asynccontextmanager
async def logged_in(server: Server, user: str) -> AsyncIterator[tuple[WsClient, str, int]]:
    """A browser logged in as ``user`` with its websocket open: (socket, cookie, pid of
    the worker that holds the socket)."""
    async with new_client(server) as browser:
        assert (await browser.post(f"/login/{user}")).status_code == 200
        cookie = cookie_header(browser)
    async with websocket_of(server, cookie) as ws:
        hello = await ws.ask("hello")
        assert hello["user"] == user
        yield ws, cookie, hello["pid"]


async def on_worker_other_than(
    server: Server, pid: int, cookie: str = ""
) -> AsyncIterator[httpx.AsyncClient]:
    """A keep-alive client whose connection is served by a worker other than ``pid``
    (which worker accepts a connection is the kernel's choice: bounded retries)."""
    for _ in range(100):
        client = new_client(server, keep_alive=True)
        if cookie:
            client.headers["cookie"] = cookie
        if (await client.get("/pid")).json()["pid"] != pid:
            try:
                yield client
            finally:
                await client.aclose()
            return
        await client.aclose()
    pytest.fail("every connection went to the same worker")


def wait_for_output(server: Server, text: str, timeout: float = 10.0) -> None:
    """Poll the server's log until ``text`` appears (bounded); run it in a thread."""
    deadline = time.monotonic() + timeout
    while text not in server.output():
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged within {timeout} s:\n{server.output()}")
        time.sleep(0.05)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    table = unique_table("qs_live")
    used: list[str] = []
    with ExitStack() as running:

        def start(db_url: str = "", cleanup_url: str = "", **variables: str) -> Server:
            url = db_url or f"sqlite+aiosqlite:///{tmp_path / 'sessions.sqlite3'}"
            used.append(cleanup_url or url)
            env = server_env(
                tmp_path / "instance",
                QUARTSESS_SECRET_KEY="live-secret-0123456789abcdef0123",
                QUARTSESS_DB_URL=url,
                QUARTSESS_TABLE=table,
                QUARTSESS_CHECK_INTERVAL=str(CHECK),
                **variables,
            )
            log = tmp_path / f"hypercorn-{len(used)}.log"
            return running.enter_context(
                hypercorn_server(
                    env, log, arguments=(), application="tests.liveapp:create_app()",
                    ready_path="/health",
                )
            )  # fmt: skip

        yield start
    for url in used:
        if not url.startswith("sqlite"):
            asyncio.run(drop_tables_of(url, table))


async def server_url(backend: str) -> str:
    return "" if backend == "sqlite" else await require_server(backend)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
async def test_ended_sessions_close_their_websockets_on_every_worker(
    backend: str, serve: Any
) -> None:
    server = serve(await server_url(backend))
    took: list[float] = []

    # Revoked by a request that the other worker serves.
    async with logged_in(server, "ada") as (ws, _, pid):
        async for other in on_worker_other_than(server, pid):
            answer = (await other.post("/revoke/ada")).json()
            assert answer["pid"] != pid and answer["revoked"] == 1
        code, seconds = await ws.closed()
        assert code == 1008
        took.append(seconds)

    # Logged out in another tab (the same cookie).
    async with logged_in(server, "bob") as (ws, cookie, pid):
        async with new_client(server) as tab:
            tab.headers["cookie"] = cookie
            assert (await tab.post("/logout")).status_code == 200
        code, seconds = await ws.closed()
        assert code == 1008
        took.append(seconds)

    # A login as someone else elsewhere: the ID the socket opened with is gone.
    async with logged_in(server, "carol") as (ws, cookie, pid):
        async for other in on_worker_other_than(server, pid, cookie):
            assert (await other.post("/login/dave")).status_code == 200
        code, seconds = await ws.closed()
        assert code == 1008
        took.append(seconds)

    # A live session's websocket stays open across many checks of both workers.
    async with logged_in(server, "erin") as (ws, _, pid):
        deadline = time.monotonic() + 10 * CHECK
        while time.monotonic() < deadline:
            answer = await ws.ask("still here")
            assert answer == {"pid": pid, "user": "erin", "message": "still here"}
            await asyncio.sleep(CHECK)
    assert max(took) < CLOSED_WITHIN
    assert "Traceback" not in server.output()


async def test_a_session_past_its_absolute_deadline_closes_its_websocket(serve: Any) -> None:
    server = serve(QUARTSESS_ABSOLUTE_TIMEOUT="2")
    async with logged_in(server, "ada") as (ws, _, _pid):
        started = time.monotonic()
        assert (await ws.ask("before"))["user"] == "ada"
        code, _ = await ws.closed()
        assert code == 1008
        assert time.monotonic() - started < 2 + CLOSED_WITHIN


async def test_a_database_outage_during_the_checks_closes_nothing(serve: Any) -> None:
    url = make_url(await require_server("postgresql"))
    proxy = ThreadedProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        server = serve(
            proxied.render_as_string(hide_password=False),
            cleanup_url=url.render_as_string(hide_password=False),
        )
        async with logged_in(server, "ada") as (ws, _, _pid):
            proxy.stop()
            await asyncio.to_thread(wait_for_output, server, "could not be checked")
            assert (await ws.ask("during"))["user"] == "ada"
            proxy.start()
            await asyncio.to_thread(wait_for_output, server, "checked again")
            assert (await ws.ask("after"))["user"] == "ada"
        output = server.output()
        assert output.count("could not be checked") <= 2  # once per worker with a socket
        assert "Traceback" not in output
    finally:
        proxy.close()
