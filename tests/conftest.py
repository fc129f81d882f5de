"""Shared fixtures: one parametrized database fixture (SQLite, PostgreSQL, MariaDB),
an injectable clock, and an app factory.

PostgreSQL and MariaDB tests run against real servers. Their URLs come from
QUARTSESS_TEST_POSTGRES_URL / QUARTSESS_TEST_MARIADB_URL (defaults: the loopback servers
of the project's machines). A server that does not answer skips its tests with a reason,
except when CI=true, where it fails them. With QUARTSESS_TEST_PGBOUNCER=1 the PostgreSQL
tests go through a PgBouncer in transaction pooling mode that the run starts in front of
that server (``tests/pgbouncer.py``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from quartsess import Session

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
_run_resources = ExitStack()


def pytest_sessionstart(session: pytest.Session) -> None:
    if THROUGH_PGBOUNCER:
        from tests.pgbouncer import pgbouncer

        bouncer = _run_resources.enter_context(pgbouncer(SERVER_URLS["postgresql"]))
        SERVER_URLS["postgresql"] = bouncer.url_for(SERVER_URLS["postgresql"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _run_resources.close()


IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SECRET = "test-secret-key-0123456789abcdef"

_reachability: dict[str, str | None] = {}


async def _server_problem(backend: str) -> str | None:
    """None when the server answers, else why not (checked once per test run)."""
    if backend not in _reachability:
        engine = create_async_engine(SERVER_URLS[backend], connect_args=_probe_args(backend))
        try:
            async with asyncio.timeout(10):
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            _reachability[backend] = None
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
    return f"qs_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def db_url(backend: str, tmp_path: Path, table_name: str) -> AsyncIterator[str]:
    """A database URL for ``backend``; server tables named ``table_name`` are dropped after."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'sessions.sqlite3'}"
        return
    url = await require_server(backend)
    yield url
    from tests.support import drop_table

    await drop_table(url, table_name)


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
def make_app(db_url: str, table_name: str, clock: FakeClock) -> Iterator[AppFactory]:
    """Build a fresh app with quartsess on the test database: ``make_app(**config)``."""

    def factory(*, session_clock: Callable[[], float] | None = None, **config: Any) -> Quart:
        app = Quart(__name__)
        app.config.update(
            SECRET_KEY=SECRET,
            SESSION_DB_URL=db_url,
            SESSION_TABLE=table_name,
            TESTING=True,
        )
        app.config.update(config)
        Session(app, clock=session_clock or clock)
        return app

    yield factory
