"""Routes and database helpers shared by the core tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import fields
from typing import Any, TypeVar

from quart import Quart, Response, jsonify, request, session
from sqlalchemy import event, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quartsess import Session
from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore


def add_routes(app: Quart) -> Quart:
    """A small app of the kind users write: set, read, pop, clear, count, cart, login."""

    @app.post("/set")
    async def set_values() -> Response:
        session.update(await request.get_json())
        return jsonify(ok=True)

    @app.get("/get")
    async def get_all() -> Response:
        return jsonify(dict(session.items()))

    @app.get("/get/<key>")
    async def get_one(key: str) -> Response:
        return jsonify(value=session.get(key))

    @app.post("/pop/<key>")
    async def pop(key: str) -> Response:
        return jsonify(value=session.pop(key, None))

    @app.post("/clear")
    async def clear() -> Response:
        session.clear()
        return jsonify(ok=True)

    @app.get("/visits")
    async def visits() -> Response:
        session["visits"] = session.get("visits", 0) + 1
        return jsonify(visits=session["visits"])

    @app.post("/cart/<item>")
    async def add_to_cart(item: str) -> Response:
        cart = session.setdefault("cart", {})
        cart[item] = cart.get(item, 0) + 1  # in place: no session.modified needed
        return jsonify(cart=cart)

    @app.post("/login")
    async def login() -> Response:
        session.regenerate()
        session["user"] = (await request.get_json())["user"]
        return jsonify(ok=True)

    @app.post("/permanent")
    async def make_permanent() -> Response:
        session.permanent = True
        return jsonify(ok=True)

    @app.get("/static-page")
    async def static_page() -> str:
        return "no session used"

    return app


# Unnamed statements only: test helpers work through a transaction-pooling PgBouncer too.
POOLER_SAFE_ASYNCPG = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}


def helper_engine(url: str) -> AsyncEngine:
    """An engine for the tests' own look at a database (through a pooler too)."""
    if make_url(url).get_driver_name() == "asyncpg":
        return create_async_engine(url, connect_args=POOLER_SAFE_ASYNCPG)
    return create_async_engine(url)


async def drop_table(url: str, table: str) -> None:
    """Drop ``table`` from a server database, if it is there."""
    engine = helper_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    finally:
        await engine.dispose()


T = TypeVar("T")
DEADLINE = 10  # seconds; every wait on another request is bounded


async def bounded(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` for at most ``DEADLINE`` seconds."""
    async with asyncio.timeout(DEADLINE):
        return await awaitable


def add_gated_route(app: Quart) -> dict[str, tuple[asyncio.Event, asyncio.Event]]:
    """POST /gated/<name>/<key>/<value>: loads the session, signals, waits for its gate,
    then sets the key (``value`` "regenerate" calls session.regenerate() instead)."""
    gates: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}

    @app.post("/gated/<name>/<key>/<value>")
    async def gated(name: str, key: str, value: str) -> Response:
        entered, gate = gates.setdefault(name, (asyncio.Event(), asyncio.Event()))
        session.get(key)
        entered.set()
        await gate.wait()
        if value == "regenerate":
            session.regenerate()
            session[key] = "logged-in"
        else:
            session[key] = int(value) if value.isdigit() else value
        return jsonify(ok=True)

    for name in ("b", "c", "d"):
        gates[name] = (asyncio.Event(), asyncio.Event())
    return gates


async def start(client: Any, path: str, entered: asyncio.Event) -> asyncio.Future[Any]:
    request = asyncio.ensure_future(client.post(path))
    await bounded(entered.wait())
    return request


def store_of(app: Quart) -> SqlStore:
    extension: Session = app.extensions["quartsess"]
    store = extension.store_for(app)
    assert isinstance(store, SqlStore)
    return store


async def stored_rows(app: Quart) -> list[StoredSession]:
    store = store_of(app)
    t = store.table

    def work(connection: Connection) -> list[StoredSession]:
        columns = [t.c[f.name] for f in fields(StoredSession)]  # not the lease's
        result = connection.execute(select(*columns).order_by(t.c.created_at))
        return [
            StoredSession(
                row.id_hash,
                bytes(row.payload),
                row.version,
                row.created_at,
                row.touched_at,
                row.expires_at,
                row.handle,
                row.user_hash,
                None if row.client is None else bytes(row.client),
            )
            for row in result
        ]

    return await store.run(work)


async def execute(app: Quart, statement: Any, params: dict[str, Any] | None = None) -> None:
    def work(connection: Connection) -> None:
        connection.execute(statement, params or {})

    await store_of(app).run(work)


class StatementLog:
    """Records what the app's store sends: ``statements`` holds the per-request statements
    by name (load, insert, update, touch, delete), ``sql`` the first word of every
    statement that goes through SQLAlchemy (maintenance: pruning, statistics, rotation)."""

    def __init__(self, app: Quart) -> None:
        self.store = store_of(app)
        self.engine = self.store.sync_engine
        self.statements: list[str] = []
        self.sql: list[str] = []

    def _record_sql(self, *args: Any) -> None:
        self.sql.append(str(args[2]).split(None, 1)[0].upper())

    def __enter__(self) -> StatementLog:
        self.store.statement_listeners.append(self.statements.append)
        event.listen(self.engine, "before_cursor_execute", self._record_sql)
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.statement_listeners.remove(self.statements.append)
        event.remove(self.engine, "before_cursor_execute", self._record_sql)

    def count(self, verb: str) -> int:
        """How many SQLAlchemy statements began with ``verb``."""
        return self.sql.count(verb)


def session_cookie(response: Any, name: str = "session") -> str | None:
    """The value a response sets for the session cookie ('' when it deletes it)."""
    for header in response.headers.getlist("Set-Cookie"):
        key, _, rest = header.partition("=")
        if key == name:
            return rest.split(";", 1)[0]
    return None
