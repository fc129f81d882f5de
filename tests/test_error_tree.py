"""Every public method that touches the store speaks quartsess's error tree: with the
database down, ``user_sessions``, ``revoke_session``, ``revoke_user_sessions`` and
``prune`` raise ``SessionStoreUnavailable`` (a view gets 503 with ``Retry-After``, and a
log line), never a raw driver error; a missing table is ``TableMissing``; before start-up
on a fresh SQLite file they create the table as a first request would."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, jsonify, session
from sqlalchemy.engine import make_url

from quartsess import Session, SessionStoreUnavailable, StoreError, TableMissing
from tests.conftest import SECRET, require_server
from tests.proxy import TcpProxy
from tests.tables import drop_tables_of, unique_table

Call = Callable[[Session], Awaitable[Any]]
CALLS: dict[str, Call] = {
    "user_sessions": lambda ext: ext.user_sessions("ada"),
    "revoke_session": lambda ext: ext.revoke_session("h" * 22),
    "revoke_user_sessions": lambda ext: ext.revoke_user_sessions("ada"),
    "prune": lambda ext: ext.prune(),
}


def app_on(url: str, table: str, **config: Any) -> Quart:
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        SESSION_DB_URL=url,
        SESSION_TABLE=table,
        SESSION_PRUNE_INTERVAL=0,
        PROPAGATE_EXCEPTIONS=False,
        **config,
    )
    Session(app)

    @app.post("/login")
    async def login() -> Any:
        session["user_id"] = "ada"
        return jsonify(ok=True)

    @app.post("/call/<name>")
    async def call(name: str) -> Any:
        return jsonify(result=str(await CALLS[name](app.extensions["quartsess"])))

    return app


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
async def test_with_the_database_down_every_method_is_a_503_in_a_view(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_url(await require_server(server))
    table = unique_table("qs_tree")
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 0)
    await proxy.start()
    app = app_on(url.set(host="127.0.0.1", port=proxy.port).render_as_string(False), table)
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await client.post("/login")
            await proxy.stop()
            ext: Session = app.extensions["quartsess"]
            for name, call in CALLS.items():
                with pytest.raises(SessionStoreUnavailable) as raised:
                    async with asyncio.timeout(15):
                        await call(ext)
                assert raised.value.__cause__ is not None, name  # the driver's error, chained
                caplog.clear()
                with caplog.at_level(logging.ERROR, logger="quartsess"):
                    async with asyncio.timeout(15):
                        response = await client.post(f"/call/{name}")
                assert response.status_code == 503, name
                assert response.headers["Retry-After"] == "5"
                body = await response.get_data(as_text=True)
                assert "temporarily unavailable" in body and "Errno" not in body
                assert any("session store failed" in r.getMessage() for r in caplog.records)
            await proxy.start()
            assert await ext.user_sessions("ada") != []  # back by itself
    finally:
        await proxy.stop()
        await drop_tables_of(url.render_as_string(False), table)


async def test_a_missing_table_is_table_missing_naming_the_command(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sessions.sqlite3'}"
    app = app_on(url, "absent", SESSION_CREATE_TABLE=False)
    ext: Session = app.extensions["quartsess"]
    for name, call in CALLS.items():
        with pytest.raises(TableMissing, match="quart sessions migrate"):
            await call(ext)
        assert issubclass(TableMissing, StoreError), name


async def test_before_start_up_a_fresh_sqlite_file_gets_its_table(tmp_path: Path) -> None:
    # A script or a cron job that never serves the app: the methods work as a first
    # request would, creating the table (SESSION_CREATE_TABLE, the default).
    for name, call in CALLS.items():
        url = f"sqlite+aiosqlite:///{tmp_path / f'{name}.sqlite3'}"
        app = app_on(url, "quart_sessions")
        result = await call(app.extensions["quartsess"])
        assert result in ([], False, 0), name
        await app.extensions["quartsess"].store_for(app).close()


async def test_asyncpg_errors_that_sqlalchemy_lets_through_are_503s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLAlchemy 2.0 (which quartsess accepts) lets some of asyncpg's own errors out of
    a failed connect unwrapped (sqlalchemy#11956: too many connections, a database that
    is starting, a wrong password), and no version maps InternalClientError. They are
    outages like any other, not raw errors."""
    import asyncpg

    url = await require_server("postgresql")
    table = unique_table("qs_tree_pg")
    app = app_on(url, table)
    try:
        async with app.test_app():
            ext: Session = app.extensions["quartsess"]
            store = ext.parts_for(app).store

            async def refused(work: Any) -> Any:
                raise asyncpg.TooManyConnectionsError("sorry, too many clients already")

            monkeypatch.setattr(store.connections, "run", refused)
            for name, call in CALLS.items():
                with pytest.raises(SessionStoreUnavailable) as raised:
                    await call(ext)
                assert isinstance(raised.value.__cause__, asyncpg.TooManyConnectionsError), name
    finally:
        await drop_tables_of(url, table)
