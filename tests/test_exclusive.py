"""``@exclusive``: the requests of one session to such routes run one at a time, each on
what the previous one saved; others are not held up; the hold ends with the save, a view
that raises, a client that goes away, or the lease of a worker that died. In one process
on SQLite, PostgreSQL and MariaDB; tests/test_exclusive_hypercorn.py does it across
workers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from quart import Quart, jsonify
from sqlalchemy import text

from quartsess import exclusive, session
from quartsess.holds import LEASE_SECONDS
from tests.conftest import AppFactory, FakeClock
from tests.support import execute, stored_rows


def exclusive_app(make_app: AppFactory, **config: Any) -> tuple[Quart, dict[str, Any]]:
    """The app, and the gates its blocking route waits on (set by the tests)."""
    app = make_app(SESSION_PRUNE_INTERVAL=0, **config)
    gates: dict[str, Any] = {"entered": asyncio.Event(), "go": asyncio.Event()}

    @app.post("/start")
    async def start() -> Any:
        session["n"] = 0
        session["cart"] = {}
        return jsonify(ok=True)

    @app.post("/count")
    @exclusive
    async def count() -> Any:
        n = session["n"]
        await asyncio.sleep(0)  # let the others run: without the hold they would read n too
        session["n"] = n + 1
        return jsonify(n=session["n"])

    @app.post("/count-unheld")
    async def count_unheld() -> Any:
        n = session["n"]
        await asyncio.sleep(0)
        session["n"] = n + 1
        return jsonify(n=session["n"])

    @app.post("/add/<product>")
    async def add(product: str) -> Any:
        cart = session["cart"]
        cart[product] = cart.get(product, 0) + 1
        await asyncio.sleep(0)
        return jsonify(ok=True)

    @app.post("/blocking")
    @exclusive
    async def blocking() -> Any:
        gates["entered"].set()
        await gates["go"].wait()
        session["blocked"] = True
        return jsonify(ok=True)

    @app.post("/fail")
    @exclusive
    async def fail() -> Any:
        raise RuntimeError("a view that fails")

    @app.get("/state")
    async def state() -> Any:
        return jsonify(dict(session.items()))

    return app, gates


async def holding(client: Any, gates: dict[str, Any]) -> asyncio.Future[Any]:
    """Start ``POST /blocking`` and wait (bounded) until its view holds the session;
    the request's future (its view waits for ``gates["go"]``)."""
    blocked = asyncio.ensure_future(client.post("/blocking"))
    async with asyncio.timeout(5):
        await gates["entered"].wait()
    return blocked


async def lease_of(app: Quart, table_name: str) -> list[tuple[Any, Any]]:
    """The lease columns of every row."""
    store = app.extensions["quartsess"].store_for(app)

    def read(connection: Any) -> list[tuple[Any, Any]]:
        query = text(f"SELECT lease_owner, lease_until FROM {table_name}")  # noqa: S608
        return [tuple(row) for row in connection.execute(query)]

    result: list[tuple[Any, Any]] = await store.run(read)
    return result


async def test_parallel_requests_of_one_session_count_every_one(make_app: AppFactory) -> None:
    app, _ = exclusive_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        answers = await asyncio.gather(*(client.post("/count") for _ in range(30)))
        assert [a.status_code for a in answers] == [200] * 30
        assert sorted([(await a.get_json())["n"] for a in answers]) == list(range(1, 31))
        assert (await (await client.get("/state")).get_json())["n"] == 30
        # The same without @exclusive loses counts: what the hold is for.
        await asyncio.gather(*(client.post("/count-unheld") for _ in range(30)))
        assert (await (await client.get("/state")).get_json())["n"] < 60


async def test_products_added_in_parallel_all_survive_without_exclusive(
    make_app: AppFactory,
) -> None:
    app, _ = exclusive_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        products = [f"p{n}" for n in range(20)]
        await asyncio.gather(*(client.post(f"/add/{p}") for p in products))
        cart = (await (await client.get("/state")).get_json())["cart"]
        assert cart == dict.fromkeys(products, 1)


async def test_others_are_not_held_up(make_app: AppFactory) -> None:
    app, gates = exclusive_app(make_app)
    async with app.test_app() as test_app:
        holder, other = test_app.test_client(), test_app.test_client()
        await holder.post("/start")
        await other.post("/start")
        blocked = await holding(holder, gates)
        # Another session's exclusive route, and this session's other routes, go on.
        assert (await other.post("/count")).status_code == 200
        assert (await holder.get("/state")).status_code == 200
        gates["go"].set()
        assert (await blocked).status_code == 200


async def test_a_waiter_gets_503_with_retry_after_when_the_hold_lasts_too_long(
    make_app: AppFactory, table_name: str
) -> None:
    app, gates = exclusive_app(make_app, SESSION_EXCLUSIVE_TIMEOUT=0.3)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        blocked = await holding(client, gates)
        refused = await client.post("/count")
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        gates["go"].set()
        assert (await blocked).status_code == 200
        assert (await client.post("/count")).status_code == 200  # free again
        assert await lease_of(app, table_name) == [(None, None)]


async def test_a_view_that_raises_releases_the_hold(
    make_app: AppFactory, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = exclusive_app(make_app, PROPAGATE_EXCEPTIONS=False)  # a 500, as when serving
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        with caplog.at_level(logging.ERROR):
            assert (await client.post("/fail")).status_code == 500
        assert await lease_of(app, table_name) == [(None, None)]
        assert (await client.post("/count")).status_code == 200


async def test_a_client_that_goes_away_releases_the_hold(
    make_app: AppFactory, table_name: str
) -> None:
    app, gates = exclusive_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        async with client.request("/blocking", method="POST") as connection:
            await connection.send_complete()
            async with asyncio.timeout(5):
                await gates["entered"].wait()
            [(owner, _)] = await lease_of(app, table_name)
            assert owner is not None
            await connection.disconnect()  # the client goes: Quart cancels the handler
        async with asyncio.timeout(5):
            assert (await client.post("/count")).status_code == 200
        assert await lease_of(app, table_name) == [(None, None)]


async def test_a_dead_holders_lease_runs_out(
    make_app: AppFactory, table_name: str, clock: FakeClock
) -> None:
    app, _ = exclusive_app(make_app, SESSION_EXCLUSIVE_TIMEOUT=0.3)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        # A worker that died holding the session: its lease is in the row, nobody renews it.
        until = int(clock()) + LEASE_SECONDS
        await execute(
            app,
            text(f"UPDATE {table_name} SET lease_owner = 'dead', lease_until = {until}"),  # noqa: S608
        )
        assert (await client.post("/count")).status_code == 503
        clock.advance(LEASE_SECONDS)
        assert (await client.post("/count")).status_code == 200


async def test_a_new_visitor_has_nothing_to_wait_for_and_costs_no_statement(
    make_app: AppFactory,
) -> None:
    app, _ = exclusive_app(make_app)

    @app.post("/new")
    @exclusive
    async def new() -> Any:
        session["n"] = 1
        return jsonify(ok=True)

    statements: list[str] = []
    app.extensions["quartsess"].store_for(app).statement_listeners.append(statements.append)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.post("/new")).status_code == 200
        assert statements == ["insert"]
        statements.clear()
        assert (await client.post("/count")).status_code == 200
        # A held request: the load, the lease, the write, the release.
        assert statements == ["load", "take_lease", "update", "release_lease"]


async def test_the_holder_works_on_what_the_previous_holder_saved(
    make_app: AppFactory, table_name: str
) -> None:
    app, gates = exclusive_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        blocked = await holding(client, gates)
        waiting = asyncio.ensure_future(client.post("/count"))  # loaded before the save
        await asyncio.sleep(0)
        gates["go"].set()
        assert (await blocked).status_code == 200
        assert (await (await waiting).get_json()) == {"n": 1}
        state = await (await client.get("/state")).get_json()
        assert state == {"n": 1, "cart": {}, "blocked": True}  # neither change lost


async def test_a_table_without_the_lease_serves_all_but_exclusive_routes(
    make_app: AppFactory, table_name: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = exclusive_app(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        for column in ("lease_owner", "lease_until"):
            await execute(app, text(f"ALTER TABLE {table_name} DROP COLUMN {column}"))
    app, _ = exclusive_app(make_app)  # a worker started on the table of revision 0002
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        assert (await client.post("/add/tea")).status_code == 200
        with caplog.at_level(logging.ERROR):
            refused = await client.post("/count")
        assert refused.status_code == 503
        assert "quart sessions migrate" in caplog.text and "lease_owner" in caplog.text
        assert len(await stored_rows(app)) == 2


async def test_a_session_that_ends_while_waiting_stores_nothing_and_keeps_the_cookie(
    make_app: AppFactory,
) -> None:
    app, gates = exclusive_app(make_app)

    @app.post("/peek")
    @exclusive
    async def peek() -> Any:
        session["seen"] = True  # a write the ended session must not turn into a new one
        return jsonify(dict(session))

    @app.post("/logout")
    async def logout() -> Any:
        session.clear()
        return jsonify(ok=True)

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        blocked = await holding(client, gates)
        waiting = asyncio.ensure_future(client.post("/peek"))
        await asyncio.sleep(0)
        assert (await client.post("/logout")).status_code == 200
        gates["go"].set()
        assert (await blocked).status_code == 200
        answer = await waiting
        assert answer.status_code == 200
        assert await answer.get_json() == {"seen": True}  # it saw an empty session
        assert "Set-Cookie" not in answer.headers  # and stored none: no cookie to undo
        assert await stored_rows(app) == []


async def test_changes_made_before_the_hold_are_merged_not_lost(make_app: AppFactory) -> None:
    app, gates = exclusive_app(make_app)

    @app.before_request
    async def note_the_visit() -> None:
        if "n" in session:
            session["last_path"] = "/count"

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        blocked = await holding(client, gates)
        waiting = asyncio.ensure_future(client.post("/count"))  # its hook wrote before
        await asyncio.sleep(0)
        gates["go"].set()
        assert (await blocked).status_code == 200
        assert (await waiting).status_code == 200
        state = await (await client.get("/state")).get_json()
        assert state["blocked"] is True and state["n"] == 1 and state["last_path"] == "/count"


async def test_a_waiter_whose_client_goes_leaves_nothing_behind(make_app: AppFactory) -> None:
    app, gates = exclusive_app(make_app)
    holds = app.extensions["quartsess"].parts_for(app).holds
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        blocked = await holding(client, gates)
        async with client.request("/count", method="POST") as waiter:
            await waiter.send_complete()
            for _ in range(20):  # let it reach the queue behind the holder in this worker
                await asyncio.sleep(0)
            await waiter.disconnect()
        gates["go"].set()
        assert (await blocked).status_code == 200
        assert (await client.post("/count")).status_code == 200
    assert holds._queues == {}


async def test_a_request_that_lost_its_lease_gets_503_and_writes_nothing(
    make_app: AppFactory, table_name: str
) -> None:
    app, _ = exclusive_app(make_app)

    @app.post("/slow-and-robbed")
    @exclusive
    async def slow_and_robbed() -> Any:
        # As if the lease ran out during a long request and another one took it.
        await execute(app, text(f"UPDATE {table_name} SET lease_owner = 'thief'"))  # noqa: S608
        hold = session.hold
        assert hold is not None
        hold.confirmed -= LEASE_SECONDS  # long ago: the save checks the lease first
        session["n"] = 100
        return jsonify(ok=True)

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/start")
        refused = await client.post("/slow-and-robbed")
        assert refused.status_code == 503
        assert (await (await client.get("/state")).get_json())["n"] == 0
