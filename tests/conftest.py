"""Shared fixtures: one parametrized database fixture (SQLite, PostgreSQL, MariaDB),
an injectable clock, and an app factory.

PostgreSQL and MariaDB tests run against real servers. Their URLs come from
QUARTSESS_TEST_POSTGRES_URL / QUARTSESS_TEST_MARIADB_URL (defaults: the loopback servers
of the project's machines). A server that does not answer skips its tests with a reason,
except when CI=true, where it fails them. With QUARTSESS_TEST_PGBOUNCER=1 the PostgreSQL
tests go through a PgBouncer in transaction pooling mode that the run starts in front of
that server (``tests/pgbouncer.py``). With QUARTSESS_TEST_APP_ENGINE=1, apps made by
``make_app`` keep their sessions on an engine of their own (``Session(app, engine=...)``)
unless a test sets the database or engine options itself.

Server tables get names from ``tests.tables.unique_table``; at the end of the run, a table
of this run still on a server fails the run (see ``pytest_sessionfinish``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quartsess import Session
from tests import tables
from tests.support import helper_engine

SERVER_URLS = {
    "postgresql": os.environ.get(
        "QUARTSESS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get(
        "QUARTSESS_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"
    ),
}
BACKENDS = ["sqlite", *SERVER_URLS]
THROUGH_PGBOUNCER = os.environ.get("QUARTSESS_TEST_PGBOUNCER", "") == "1"
ON_APP_ENGINE = os.environ.get("QUARTSESS_TEST_APP_ENGINE", "") == "1"
_run_resources = ExitStack()


def pytest_sessionstart(session: pytest.Session) -> None:
    if THROUGH_PGBOUNCER:
        from tests.pgbouncer import pgbouncer

        bouncer = _run_resources.enter_context(pgbouncer(SERVER_URLS["postgresql"]))
        SERVER_URLS["postgresql"] = bouncer.url_for(SERVER_URLS["postgresql"])


IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SECRET = "test-secret-key-0123456789abcdef"

_reachability: dict[str, str | None] = {}
_tables_at_start: dict[str, set[str]] = {}  # of each server this run used, at first use


async def _server_problem(backend: str) -> str | None:
    """None when the server answers, else why not (checked once per test run)."""
    if backend not in _reachability:
        engine = create_async_engine(SERVER_URLS[backend], connect_args=_probe_args(backend))
        try:
            async with asyncio.timeout(10):
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            _reachability[backend] = None
            _tables_at_start[backend] = await tables.table_names(SERVER_URLS[backend])
        except Exception as error:  # any failure means "not usable here"
            _reachability[backend] = f"{type(error).__name__}: {error}".splitlines()[0]
        finally:
            await engine.dispose()
    return _reachability[backend]


def _probe_args(backend: str) -> dict[str, Any]:
    if backend == "postgresql":  # unnamed statements: through a pooler too
        return {"timeout": 3, "statement_cache_size": 0, "prepared_statement_cache_size": 0}
    return {"connect_timeout": 3}


async def require_server(backend: str) -> str:
    """The URL of a server backend, or skip (fail in CI) when it is not reachable."""
    problem = await _server_problem(backend)
    if problem is not None:
        message = f"{backend} server not reachable at {SERVER_URLS[backend]} ({problem})"
        if IN_CI:
            pytest.fail(f"{message}; it is required when CI=true")
        pytest.skip(message)
    return SERVER_URLS[backend]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def table_name() -> str:
    return tables.unique_table()


@pytest.fixture
async def db_url(backend: str, tmp_path: Path, table_name: str) -> AsyncIterator[str]:
    """A database URL for ``backend``; server tables named ``table_name`` are dropped after."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'sessions.sqlite3'}"
        return
    url = await require_server(backend)
    yield url
    await tables.drop_tables_of(url, table_name)


class FakeClock:
    """An injectable clock: epoch seconds that move only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


AppFactory = Callable[..., Quart]


@pytest.fixture
async def make_app(db_url: str, table_name: str, clock: FakeClock) -> AsyncIterator[AppFactory]:
    """Build a fresh app with quartsess on the test database: ``make_app(**config)``."""
    engines: list[AsyncEngine] = []

    def factory(*, session_clock: Callable[[], float] | None = None, **config: Any) -> Quart:
        app = Quart(__name__)
        app.config.update(
            SECRET_KEY=SECRET,
            SESSION_DB_URL=db_url,
            SESSION_TABLE=table_name,
            TESTING=True,
        )
        app.config.update(config)
        engine = None
        if ON_APP_ENGINE and not {"SESSION_DB_URL", "SESSION_ENGINE_OPTIONS"} & set(config):
            engine = helper_engine(db_url)
            engines.append(engine)
        Session(app, clock=session_clock or clock, engine=engine)
        return app

    try:
        yield factory
    finally:
        for engine in engines:
            await engine.dispose()


def _left_behind() -> tuple[list[str], list[str]]:
    """Server tables this run generated and left (``backend: table``), and new tables named
    like the library's default one, which this run or a parallel one made."""
    ours: list[str] = []
    unsure: list[str] = []
    for backend, before in _tables_at_start.items():
        now = asyncio.run(tables.table_names(SERVER_URLS[backend]))
        ours += [f"{backend}: {table}" for table in tables.ours(now, tables.GENERATED)]
        unsure += [f"{backend}: {table}" for table in tables.project_named(now - before)]
    return ours, unsure


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test left one of this run's tables on a server; then stop what
    the run started (a PgBouncer), after that check, which may go through it."""
    try:
        if not _tables_at_start:
            return
        ours, unsure = _left_behind()
        session.config.stash[_LEFT_BEHIND] = (ours, unsure)
        if ours and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        _run_resources.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    ours, unsure = terminalreporter.config.stash.get(_LEFT_BEHIND, ([], []))
    if ours:
        terminalreporter.section("server tables left behind", red=True)
        terminalreporter.line("this run made these tables and did not drop them (run fails):")
        for line in ours:
            terminalreporter.line(f"  {line}")
    if unsure:
        terminalreporter.section("new tables named like quart_sessions", yellow=True)
        terminalreporter.line("absent when this run started; this run or a parallel one made them:")
        for line in unsure:
            terminalreporter.line(f"  {line}")


_LEFT_BEHIND = pytest.StashKey[tuple[list[str], list[str]]]()
