"""One session, many requests at once, under real hypercorn with two workers sharing the
database (tests/exclusiveapp.py): without ``@exclusive`` products added in parallel all
survive (the merge at every depth); with it, 40 parallel adds of one product count 40; a
view that raises releases its hold; a waiter past SESSION_EXCLUSIVE_TIMEOUT gets 503; a
hold of a SIGKILLed server ends with its lease. On SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from quartsess.holds import LEASE_SECONDS
from tests.conftest import require_server
from tests.servers import Server, hypercorn_server, server_env, stop
from tests.tables import drop_tables_of, unique_table

PARALLEL = 40
SECRET = "exclusive-secret-0123456789abcdef"

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(db_url, **environment)`` starts a server (two workers) on one table."""
    table = unique_table("qs_excl")
    used: set[str] = set()
    with ExitStack() as running:

        def start(db_url: str, **variables: str) -> Server:
            used.add(db_url)
            env = server_env(
                tmp_path / "instance",
                QUARTSESS_SECRET_KEY=SECRET,
                QUARTSESS_DB_URL=db_url,
                QUARTSESS_TABLE=table,
                **variables,
            )
            log = tmp_path / f"hypercorn-{len(list(tmp_path.glob('hypercorn-*')))}.log"
            return running.enter_context(
                hypercorn_server(
                    env, log, arguments=(), application="tests.exclusiveapp:create_app()",
                    ready_path="/health",
                )
            )  # fmt: skip

        yield start
    for url in used:
        if not url.startswith("sqlite"):
            asyncio.run(drop_tables_of(url, table))


async def database(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'sessions.sqlite3'}"
    return await require_server(backend)


def browser(server: Server, cookie: str = "") -> httpx.AsyncClient:
    """No keep-alive: every request a connection of its own, spread over both workers."""
    client = httpx.AsyncClient(
        base_url=server.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )
    if cookie:
        client.headers["cookie"] = cookie
    return client


async def started(server: Server) -> str:
    """A session with an empty cart; its cookie."""
    async with browser(server) as client:
        assert (await client.post("/start")).status_code == 200
        return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


async def state(server: Server, cookie: str) -> dict[str, Any]:
    async with browser(server, cookie) as client:
        answer: dict[str, Any] = (await client.get("/state")).json()
        return answer


async def test_parallel_requests_of_one_session_on_two_workers(
    backend: str, tmp_path: Path, serve: Any
) -> None:
    server = serve(await database(backend, tmp_path))
    cookie = await started(server)
    async with browser(server, cookie) as client:
        # Different products, no @exclusive: the merge keeps every one.
        adds = await asyncio.gather(*(client.post(f"/add/p{n}") for n in range(PARALLEL)))
        assert [a.status_code for a in adds] == [200] * PARALLEL
        assert (await state(server, cookie))["cart"] == {f"p{n}": 1 for n in range(PARALLEL)}

        # One product, @exclusive: every request counts.
        adds = await asyncio.gather(*(client.post("/exclusive/add/tea") for _ in range(PARALLEL)))
        assert [a.status_code for a in adds] == [200] * PARALLEL
        assert (await state(server, cookie))["cart"]["tea"] == PARALLEL

        # A view that raises releases its hold: the next request does not wait for the
        # lease to run out.
        assert (await client.post("/exclusive/fail")).status_code == 500
        began = time.monotonic()
        assert (await client.post("/exclusive/add/mug")).status_code == 200
        assert time.monotonic() - began < LEASE_SECONDS / 2
    assert "Traceback" in server.output()  # the failing view's, logged by Quart
    assert server.output().count("Traceback") == 1


async def test_a_waiter_gets_503_after_the_exclusive_timeout(
    backend: str, tmp_path: Path, serve: Any
) -> None:
    server = serve(await database(backend, tmp_path), QUARTSESS_EXCLUSIVE_TIMEOUT="1")
    cookie = await started(server)
    async with browser(server, cookie) as client:
        holding = asyncio.ensure_future(client.post("/exclusive/block/4"))
        await asyncio.to_thread(wait_for_output, server, "holding in")
        began = time.monotonic()
        refused = await client.post("/exclusive/add/tea")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert 1 <= time.monotonic() - began < 3
        assert (await holding).status_code == 200
        assert (await client.post("/exclusive/add/tea")).status_code == 200
    assert (await state(server, cookie))["cart"] == {"tea": 1}


async def test_the_hold_of_a_killed_server_ends_with_its_lease(
    backend: str, tmp_path: Path, serve: Any
) -> None:
    url = await database(backend, tmp_path)
    first = serve(url)
    cookie = await started(first)
    async with browser(first, cookie) as client:
        holding = asyncio.ensure_future(client.post("/exclusive/block/60"))
        await asyncio.to_thread(wait_for_output, first, "holding in")
        os.killpg(first.process.pid, signal.SIGKILL)  # master and workers: nothing released
        with pytest.raises(httpx.TransportError):
            await holding
    stop(first)
    second = serve(url)
    async with browser(second, cookie) as client:
        began = time.monotonic()
        answer = await client.post("/exclusive/add/tea")
        assert answer.status_code == 200
        # At most the rest of the lease (plus a second: leases end on whole seconds).
        assert time.monotonic() - began < LEASE_SECONDS + 1
    after = await state(second, cookie)
    del after["pid"]
    assert after == {"cart": {"tea": 1}}  # the killed request saved nothing


def wait_for_output(server: Server, text: str, timeout: float = 10.0) -> None:
    """Poll the server's log until ``text`` appears (bounded); run it in a thread."""
    deadline = time.monotonic() + timeout
    while text not in server.output():
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged within {timeout} s:\n{server.output()}")
        time.sleep(0.02)
