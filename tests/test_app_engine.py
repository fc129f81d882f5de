"""``Session(app, engine=...)``: the sessions on the app's own ``AsyncEngine``, on SQLite
(aiosqlite), PostgreSQL (asyncpg) and MariaDB (asyncmy).

What a user handing over their engine checks: every connection the sessions use comes
from that engine's pool (no second pool, no asyncpg pool of quartsess's own), requests
send as few statements as on quartsess's own connections, the engine's settings stay as
the app set them for its own queries, quartsess never disposes it (not at shutdown, not in
the ``quart sessions`` commands, which still work), and settings that say otherwise are
refused at start-up.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncmy  # type: ignore[import-untyped]
import asyncpg  # type: ignore[import-untyped]
import pytest
from click.testing import Result
from quart import Quart
from sqlalchemy import create_engine, event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from quartsess import ConfigurationError, Session, StoreError
from quartsess.stores.connections import ServerConnections
from quartsess.stores.memory import MemoryStore
from quartsess.stores.sql import SqlStore
from tests.conftest import SECRET, FakeClock
from tests.support import add_routes, helper_engine, session_cookie, store_of

QUIET = {"SESSION_PRUNE_INTERVAL": 0}
DRIVERS: dict[str, Any] = {"sqlite": sqlite3, "postgresql": asyncpg, "mariadb": asyncmy}


@pytest.fixture
async def app_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """The app's engine, as an app makes it (through a pooler: unnamed statements)."""
    engine = helper_engine(db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def engine_app(engine: AsyncEngine, table: str, clock: FakeClock, **config: Any) -> Quart:
    app = Quart(__name__)
    app.config.update(SECRET_KEY=SECRET, SESSION_TABLE=table, TESTING=True, **QUIET)
    app.config.update(config)
    Session(app, engine=engine, clock=clock)
    return add_routes(app)


@contextmanager
def connections_opened(engine: AsyncEngine, backend: str) -> Iterator[dict[str, int]]:
    """Counts, while the block runs: every connection the process opens with the
    database's driver (``driver``), and those ``engine``'s pool opened (``pool``) or
    handed out (``checkouts``)."""
    counts = {"driver": 0, "pool": 0, "checkouts": 0}
    module = DRIVERS[backend]
    original = module.connect

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        counts["driver"] += 1
        return original(*args, **kwargs)

    def on_connect(*_args: Any) -> None:
        counts["pool"] += 1

    def on_checkout(*_args: Any) -> None:
        counts["checkouts"] += 1

    pool = engine.sync_engine.pool
    module.connect = counting_connect
    event.listen(pool, "connect", on_connect)
    event.listen(pool, "checkout", on_checkout)
    try:
        yield counts
    finally:
        module.connect = original
        event.remove(pool, "connect", on_connect)
        event.remove(pool, "checkout", on_checkout)


async def traffic(app: Quart) -> None:
    """A bit of everything: new, read-only, changed, renewed (login), cleared sessions,
    the user-sessions API, a prune."""
    extension: Session = app.extensions["quartsess"]
    client = app.test_client()
    assert session_cookie(await client.post("/set", json={"user_id": "ada", "n": 1}))
    assert await (await client.get("/get/n")).get_json() == {"value": 1}
    assert (await (await client.get("/visits")).get_json())["visits"] == 1
    await client.post("/cart/tea")
    other = app.test_client()
    await other.post("/set", json={"user_id": "ada"})
    await other.post("/login", json={"user": "ada"})
    assert [s.handle for s in await extension.user_sessions("ada")]
    assert await extension.revoke_user_sessions("ada") == 2
    assert await (await client.get("/get")).get_json() == {}
    await client.post("/set", json={"n": 2})
    await client.post("/clear")
    await extension.prune()


async def test_the_sessions_use_the_apps_pool_for_everything(
    backend: str, app_engine: AsyncEngine, table_name: str, clock: FakeClock
) -> None:
    app = engine_app(app_engine, table_name, clock)
    connections = store_of(app).connections
    assert isinstance(connections, ServerConnections) and not connections.owned
    pool = app_engine.sync_engine.pool
    with connections_opened(app_engine, backend) as counts:
        async with app.test_app():
            await traffic(app)
        assert counts["driver"] == counts["pool"] >= 1, counts  # no connection of its own
        assert counts["checkouts"] >= 12
    assert not [t.name for t in threading.enumerate() if t.name.startswith("quartsess")]
    # Shut down: nothing checked out, and the pool is the one the app made (dispose()
    # would have replaced it) with its connections still open for the app.
    assert pool.checkedout() == 0
    assert app_engine.sync_engine.pool is pool
    assert pool.checkedin() >= 1
    async with app_engine.connect() as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar() == 1


async def test_a_request_sends_as_few_statements_as_on_quartsess_own_connections(
    app_engine: AsyncEngine, table_name: str, clock: FakeClock
) -> None:
    app = engine_app(app_engine, table_name, clock)
    names: list[str] = []
    sql: list[str] = []

    def record(*args: Any) -> None:
        sql.append(str(args[2]).split(None, 1)[0].upper())

    async with app.test_app():
        client = app.test_client()
        await client.get("/static-page")  # start-up: table check not counted
        store_of(app).statement_listeners.append(names.append)
        # The app's own engine sees every statement: one per session statement, nothing
        # else (no SET of autocommit, no PRAGMA, no BEGIN sent as a statement).
        event.listen(app_engine.sync_engine, "before_cursor_execute", record)
        try:
            steps = [
                (client.post("/set", json={"n": 1}), ["insert"], ["INSERT"]),
                (client.get("/get/n"), ["load"], ["SELECT"]),
                (client.get("/get/n"), ["load"], ["SELECT"]),
                (client.get("/visits"), ["load", "update"], ["SELECT", "UPDATE"]),
                (client.post("/clear"), ["load", "delete"], ["SELECT", "DELETE"]),
            ]
            for request, expected_names, expected_sql in steps:
                names.clear()
                sql.clear()
                assert (await request).status_code == 200
                assert (names, sql) == (expected_names, expected_sql)
        finally:
            event.remove(app_engine.sync_engine, "before_cursor_execute", record)


async def test_the_apps_engine_keeps_its_settings_and_outlives_the_app(
    app_engine: AsyncEngine, table_name: str, clock: FakeClock
) -> None:
    """quartsess runs in autocommit on connections of the app's pool; when they come
    back, the app's own work on them is transactional again, as the app set it."""
    app = engine_app(app_engine, table_name, clock)
    async with app.test_app():
        await traffic(app)
        await asyncio.gather(*(app.test_client().get("/visits") for _ in range(4)))
    table = store_of(app).table
    pooled = app_engine.sync_engine.pool.checkedin()
    assert pooled >= 1

    async def rolled_back_insert(n: int) -> int:
        """How many rows an insert rolled back left (0 unless left in autocommit)."""
        count = select(func.count()).select_from(table)
        async with app_engine.connect() as connection:
            before = await connection.scalar(count)
            await connection.rollback()
            await connection.execute(
                insert(table).values(
                    id_hash=f"{n:064x}",
                    payload=b"x",
                    version=1,
                    created_at=0,
                    touched_at=0,
                    expires_at=0,
                )
            )
            await connection.rollback()
            return int(await connection.scalar(count) or 0) - int(before or 0)

    # One after another, first in first out: every connection the pool holds, each of
    # which quartsess used.
    assert [await rolled_back_insert(n) for n in range(pooled)] == [0] * pooled
    assert app_engine.get_execution_options() == {}


async def test_the_app_can_start_again_on_the_same_engine(
    app_engine: AsyncEngine, table_name: str, clock: FakeClock
) -> None:
    app = engine_app(app_engine, table_name, clock)
    client = app.test_client()
    async with app.test_app():
        await client.post("/set", json={"n": 7})
    async with app.test_app():
        assert await (await client.get("/get/n")).get_json() == {"value": 7}
    # Without start-up (test_client() alone), too: the engine is the app's to keep.
    assert await (await client.get("/get/n")).get_json() == {"value": 7}


async def test_an_outage_of_the_apps_database_is_a_503(
    backend: str, table_name: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    if backend == "sqlite":
        return  # a file has no outage of this kind
    url = {"postgresql": "postgresql+asyncpg", "mariadb": "mysql+asyncmy"}[backend]
    engine = create_async_engine(f"{url}://nobody@127.0.0.1:9/none")  # discard port: refused
    try:
        app = engine_app(engine, table_name, clock)
        async with app.test_app():  # starts anyway, and says why sessions will fail
            response = await app.test_client().get("/visits")
            assert response.status_code == 503
            assert response.headers["Retry-After"]
            assert (await app.test_client().get("/static-page")).status_code == 200
            with pytest.raises(StoreError):
                await app.extensions["quartsess"].user_sessions("ada")
    finally:
        await engine.dispose()
    assert "not reachable at start-up" in caplog.text


# -- settings that conflict with an engine ----------------------------------------------


def bare_app(**config: Any) -> Quart:
    app = Quart(__name__)
    app.config.update(SECRET_KEY=SECRET, **config)
    return app


@pytest.fixture
async def sqlite_engine(tmp_path: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite3'}")
    try:
        yield engine
    finally:
        await engine.dispose()


def test_a_different_session_db_url_is_refused(sqlite_engine: AsyncEngine) -> None:
    app = bare_app(SESSION_DB_URL="postgresql+asyncpg://u:secret-pw@db/other")
    with pytest.raises(ConfigurationError) as raised:
        Session(app, engine=sqlite_engine)
    assert raised.value.setting == "SESSION_DB_URL"
    assert "app.sqlite3" in str(raised.value) and "secret-pw" not in str(raised.value)
    # The engine's own URL (an Alembic env.py may read SESSION_DB_URL) is fine.
    url = sqlite_engine.url.render_as_string(hide_password=False)
    extension = Session(bare_app(SESSION_DB_URL=url), engine=sqlite_engine)
    assert extension.config.engine is sqlite_engine


def test_engine_options_are_refused_with_an_engine(sqlite_engine: AsyncEngine) -> None:
    app = bare_app(SESSION_ENGINE_OPTIONS={"pool_size": 20})
    with pytest.raises(ConfigurationError) as raised:
        Session().init_app(app, engine=sqlite_engine)
    assert raised.value.setting == "SESSION_ENGINE_OPTIONS"


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(lambda: create_engine("sqlite://"), id="synchronous-engine"),
        pytest.param(lambda: "sqlite+aiosqlite:///x.db", id="url"),
    ],
)
def test_only_an_async_engine_is_accepted(given: Any) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Session(bare_app(), engine=given())
    assert raised.value.setting == "engine"
    assert "AsyncEngine" in str(raised.value)


def test_a_store_outside_sql_refuses_an_engine(sqlite_engine: AsyncEngine) -> None:
    class MemorySession(Session):
        store_class = MemoryStore

    with pytest.raises(ConfigurationError) as raised:
        MemorySession(bare_app(), engine=sqlite_engine)
    assert raised.value.setting == "engine"
    assert "MemoryStore" in str(raised.value)


@pytest.mark.parametrize(
    "url", ["postgresql+asyncpg://u@db/app", "mysql+asyncmy://u@db/app"], ids=["pg", "mysql"]
)
async def test_a_pool_too_small_for_requests_beside_the_pruner_is_refused(url: str) -> None:
    small = create_async_engine(url, pool_size=1, max_overflow=1)
    single = create_async_engine(url, poolclass=StaticPool)
    enough = create_async_engine(url, pool_size=3, max_overflow=0)
    unbounded = create_async_engine(url, poolclass=NullPool)
    try:
        with pytest.raises(ConfigurationError, match="at most 2 connections") as raised:
            Session(bare_app(), engine=small)
        assert raised.value.setting == "engine"
        with pytest.raises(ConfigurationError, match="at most 1 connection "):
            Session(bare_app(), engine=single)
        Session(bare_app(), engine=enough)
        Session(bare_app(), engine=unbounded)
    finally:
        for engine in (small, single, enough, unbounded):
            await engine.dispose()


def test_an_engine_given_to_the_extension_serves_each_app(sqlite_engine: AsyncEngine) -> None:
    extension = Session(engine=sqlite_engine)
    first, second = bare_app(), bare_app()
    extension.init_app(first)
    extension.init_app(second, engine=None)
    assert extension.parts_for(first).config.engine is sqlite_engine
    assert extension.parts_for(second).config.engine is sqlite_engine
    store = extension.store_for(first)
    assert isinstance(store, SqlStore)
    assert "app.sqlite3" in store.describe()


# -- the quart sessions commands -----------------------------------------------------------


def driver_threads() -> int:
    """aiosqlite's threads: one per open connection."""
    return sum("_connection_worker_thread" in t.name for t in threading.enumerate())


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - threads ending: no event to wait on
            await asyncio.sleep(0.01)


async def invoke(app: Quart, *args: str) -> Result:
    """A command on its own event loop in a thread, as test_cli does, while the app may
    be serving in this one."""
    runner = app.test_cli_runner()
    return await asyncio.to_thread(runner.invoke, args=["sessions", *args])


async def test_the_commands_work_and_leave_the_apps_engine_alone(
    backend: str, app_engine: AsyncEngine, table_name: str, clock: FakeClock
) -> None:
    made: list[str] = []

    def app_listener(*_args: Any) -> None:  # the app's own set-up of new connections
        made.append(threading.current_thread().name)

    event.listen(app_engine.sync_engine, "connect", app_listener)
    app = engine_app(app_engine, table_name, clock, SESSION_IDLE_TIMEOUT=600)
    pool = app_engine.sync_engine.pool
    async with app.test_app():
        client = app.test_client()
        await client.post("/set", json={"user_id": "ada"})
        await app.test_client().post("/set", json={"n": 1})
        clock.advance(700)
        await app.test_client().post("/set", json={"n": 2})
        app_connections = pool.checkedin()
        threads = driver_threads()
        made.clear()
        # While the app serves: its pool holds connections of this event loop, which a
        # command on its own loop must not use.
        stats = await invoke(app, "stats")
        assert stats.exit_code == 0, stats.output
        assert "rows:                  3" in stats.output
        listing = await invoke(app, "list", "--user", "ada")
        assert listing.exit_code == 0, listing.output
        assert "0 live sessions" in listing.output  # ada's is past its deadline
        pruned = await invoke(app, "prune")
        assert pruned.exit_code == 0, pruned.output
        assert "Pruned 2 expired sessions." in pruned.output
        rotated = await invoke(app, "rotate-keys")
        assert rotated.exit_code == 0, rotated.output
        revoked = await invoke(app, "revoke", "--user", "ada")
        assert revoked.exit_code == 0, revoked.output
        # The commands made connections like the app's (its connect listener ran for
        # them) in a pool of their own, and closed them: the app's pool is untouched.
        assert made and all(name != threading.current_thread().name for name in made)
        assert pool.checkedin() == app_connections
        assert app_engine.sync_engine.pool is pool
        await until(lambda: driver_threads() == threads)  # the commands' are gone
        assert await (await client.get("/get/n")).get_json() == {"value": None}
        assert (await app.test_client().post("/set", json={"n": 3})).status_code == 200
    event.remove(app_engine.sync_engine, "connect", app_listener)


async def test_migrate_runs_on_a_twin_of_the_apps_engine(
    app_engine: AsyncEngine, table_name: str, clock: FakeClock
) -> None:
    app = engine_app(app_engine, table_name, clock, SESSION_CREATE_TABLE=False)
    pool = app_engine.sync_engine.pool
    upgraded = await invoke(app, "migrate")
    assert upgraded.exit_code == 0, upgraded.output
    assert "(head)" in upgraded.output
    checked = await invoke(app, "migrate", "check")
    assert checked.exit_code == 0, checked.output
    assert pool.checkedout() == 0 and app_engine.sync_engine.pool is pool
    async with app.test_app():
        assert (await app.test_client().post("/set", json={"n": 1})).status_code == 200
    downgraded = await invoke(app, "migrate", "downgrade", "base")
    assert downgraded.exit_code == 0, downgraded.output
