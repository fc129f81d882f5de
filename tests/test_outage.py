"""A store that cannot answer gives a 503 (never an empty session); size and type limits."""

from __future__ import annotations

import asyncio
import logging

import pytest
from quart import Quart, jsonify, session
from sqlalchemy import text
from sqlalchemy.engine import make_url

from quartsess import SessionNotSerializable, SessionTooLarge
from tests.conftest import SECRET, AppFactory, require_server
from tests.proxy import TcpProxy
from tests.support import add_routes, execute, session_cookie, store_of, stored_rows


async def rename_table(app: Quart, source: str, target: str) -> None:
    await execute(app, text(f"ALTER TABLE {source} RENAME TO {target}"))


async def test_unreadable_store_gives_503_and_the_session_survives(
    make_app: AppFactory, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = add_routes(make_app())
    hidden = f"{table_name}_away"
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"user": "ada"})
        await rename_table(app, table_name, hidden)
        with caplog.at_level(logging.ERROR, logger="quartsess"):
            response = await client.get("/get/user")
        assert response.status_code == 503
        assert session_cookie(response) is None  # the browser keeps its cookie
        assert (await client.get("/static-page")).status_code == 200
        assert any("unavailable" in record.getMessage() for record in caplog.records)
        await rename_table(app, hidden, table_name)
        response = await client.get("/get/user")
        assert await response.get_json() == {"value": "ada"}


async def test_failed_save_gives_503_and_keeps_the_previous_content(
    make_app: AppFactory, table_name: str
) -> None:
    app = add_routes(make_app())
    hidden = f"{table_name}_away"

    @app.post("/break-then-write")
    async def break_then_write() -> object:
        session["user"] = "mallory"
        await rename_table(app, table_name, hidden)
        return jsonify(ok=True)

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/set", json={"user": "ada"})
        response = await client.post("/break-then-write")
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        await rename_table(app, hidden, table_name)
        response = await client.get("/get/user")
        assert await response.get_json() == {"value": "ada"}


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
async def test_database_outage_gives_fast_503s_and_recovers(server: str, table_name: str) -> None:
    url = make_url(await require_server(server))
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 0)
    await proxy.start()
    app = add_routes(Quart(__name__))
    app.config.update(
        SECRET_KEY=SECRET,
        TESTING=True,
        SESSION_TABLE=table_name,
        SESSION_DB_URL=url.set(host="127.0.0.1", port=proxy.port).render_as_string(False),
    )
    from quartsess import Session

    Session(app)
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await client.post("/set", json={"user": "ada"})
            await proxy.stop()
            async with asyncio.timeout(15):  # no hang: connect timeouts are short
                for _ in range(3):
                    response = await client.get("/get/user")
                    assert response.status_code == 503
            assert (await client.get("/static-page")).status_code == 200
            await proxy.start()
            # Recovers by itself: at most the few connections pooled before the outage
            # fail once more (each is then dropped), with no restart of anything.
            for _ in range(5):
                response = await client.get("/get/user")
                if response.status_code != 503:
                    break
            assert await response.get_json() == {"value": "ada"}
            await execute(app, text(f"DROP TABLE {table_name}"))
    finally:
        await proxy.stop()


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[BaseException]:
    return [r.exc_info[1] for r in caplog.records if r.exc_info and r.exc_info[1]]


async def test_oversized_session_fails_clearly_and_stores_nothing(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = add_routes(make_app(SESSION_MAX_BYTES=1000, TESTING=False))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with caplog.at_level(logging.ERROR):
            response = await client.post("/set", json={"blob": "x" * 2000})
        assert response.status_code == 500
        errors = logged_errors(caplog)
        assert errors and all(isinstance(error, SessionTooLarge) for error in errors)
        assert "SESSION_MAX_BYTES=1000" in str(errors[0])
        assert await stored_rows(app) == []

        await client.post("/set", json={"user": "ada"})
        response = await client.post("/set", json={"blob": "x" * 2000})
        assert response.status_code == 500
        assert await (await client.get("/get")).get_json() == {"user": "ada"}


async def test_values_json_cannot_hold_fail_clearly(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(TESTING=False)

    @app.get("/set-a-set")
    async def set_a_set() -> str:
        session["cart"] = {"items": [1, {"tags": {"a", "b"}}]}
        return "ok"

    async with app.test_app() as test_app:
        with caplog.at_level(logging.ERROR):
            response = await test_app.test_client().get("/set-a-set")
        assert await stored_rows(app) == []
    assert response.status_code == 500
    [error] = logged_errors(caplog)  # logged once
    assert isinstance(error, SessionNotSerializable)
    assert (error.path, error.type_name) == ("['cart']['items'][1]['tags']", "set")
    assert str(error).startswith("session['cart']['items'][1]['tags'] holds a set")


async def test_an_app_starts_while_its_database_is_down(
    table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once closed
    app = add_routes(Quart(__name__))
    app.config.update(
        SECRET_KEY=SECRET,
        TESTING=True,
        SESSION_TABLE=table_name,
        SESSION_DB_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test",
    )
    from quartsess import Session

    Session(app)
    with caplog.at_level(logging.ERROR, logger="quartsess"):
        async with app.test_app() as test_app:
            client = test_app.test_client()
            assert (await client.get("/static-page")).status_code == 200
            client.set_cookie("localhost", "session", "a" * 43)
            assert (await client.get("/get/user")).status_code == 503
    assert any("not reachable at start-up" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_no_free_connection_for_a_write_gives_503_and_writes_nothing(
    make_app: AppFactory,
) -> None:
    """The pool's time-out must end the write, not the request around it: a 503, and
    no write left running that would store a session no cookie points to."""
    app = add_routes(
        make_app(
            SESSION_ENGINE_OPTIONS={
                # A budget of 3: two for maintenance, one for requests.
                "pool_size": 3,
                "max_overflow": 0,
                "connect_args": {"timeout": 0.5},
            }
        )
    )
    async with app.test_app() as test_app:
        runner = store_of(app)._runner
        held = await runner._acquire()  # type: ignore[attr-defined]  # the only connection
        try:
            response = await test_app.test_client().post("/set", json={"user": "ada"})
            assert response.status_code == 503
            assert session_cookie(response) is None
            assert not app.session_interface._saves  # type: ignore[attr-defined]
        finally:
            runner._release(held)  # type: ignore[attr-defined]
        assert await stored_rows(app) == []
