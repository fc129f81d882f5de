"""``SESSION_REQUIRE_TABLE``: a deployment that prefers a failed rollout to a degraded one
makes a missing (or outdated) table stop the app at start-up instead of serving 503s."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from quart import Quart
from quart.testing.app import LifespanError

from quartsess import ConfigurationError, Session
from tests.conftest import SECRET, AppFactory
from tests.support import add_routes
from tests.test_alembic import migrate


async def test_a_missing_table_stops_the_app_from_starting(
    make_app: AppFactory, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = add_routes(
        make_app(SESSION_CREATE_TABLE=False, SESSION_REQUIRE_TABLE=True, SESSION_PRUNE_INTERVAL=0)
    )
    with caplog.at_level(logging.ERROR, logger="quartsess"):
        with pytest.raises(
            LifespanError, match=f"the sessions table {table_name!r} does not exist"
        ):
            async with app.test_app():
                pytest.fail("the app served without its table")  # pragma: no cover
    [message] = [r.getMessage() for r in caplog.records if r.name == "quartsess"]
    assert message.startswith("refusing to start (SESSION_REQUIRE_TABLE): table missing")
    assert "quart sessions migrate" in message


async def test_an_outdated_table_stops_it_too(tmp_path: Path) -> None:
    database = tmp_path / "old.sqlite3"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE quart_sessions (id_hash VARCHAR(64) PRIMARY KEY)")
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        SESSION_DB_URL=f"sqlite:///{database}",
        SESSION_CREATE_TABLE=False,
        SESSION_REQUIRE_TABLE=True,
    )
    Session(app)
    with pytest.raises(LifespanError, match=r"table outdated: .* has no column"):
        async with app.test_app():
            pass  # pragma: no cover


async def test_with_the_table_it_starts_and_serves(
    make_app: AppFactory, db_url: str, table_name: str
) -> None:
    await migrate(db_url, table_name, "upgrade", "head")
    try:
        app = add_routes(make_app(SESSION_CREATE_TABLE=False, SESSION_REQUIRE_TABLE=True))
        async with app.test_app() as test_app:
            assert (await test_app.test_client().get("/visits")).status_code == 200
    finally:
        await migrate(db_url, table_name, "downgrade", "base")


async def test_off_by_default_the_app_starts_and_answers_503(make_app: AppFactory) -> None:
    app = add_routes(make_app(SESSION_CREATE_TABLE=False, SESSION_PRUNE_INTERVAL=0))
    assert app.extensions["quartsess"].config.require_table is False
    async with app.test_app() as test_app:
        assert (await test_app.test_client().get("/visits")).status_code == 503


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_it_must_be_true_or_false(value: object) -> None:
    app = Quart(__name__)
    app.config.update(SECRET_KEY=SECRET, SESSION_REQUIRE_TABLE=value)
    with pytest.raises(ConfigurationError, match="SESSION_REQUIRE_TABLE: must be True or False"):
        Session(app)
