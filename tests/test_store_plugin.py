"""A store that is not SQL plugs in through ``Session.store_class`` alone: requests, the
background pruner, the user-sessions API and the ``quart sessions`` commands all work
on it, and nothing asks it for a table, a URL or a driver."""

from __future__ import annotations

import asyncio
import re
from typing import ClassVar

from quart import Quart, session

from quartsess import Session, SessionConfig
from quartsess.stores import MemoryStore, StoredSession
from tests.conftest import FakeClock


class SharedRows(MemoryStore):
    """Rows shared by every store built for one table, as those of an external store
    would be: a ``quart sessions`` command builds a store of its own."""

    tables: ClassVar[dict[str, dict[str, StoredSession]]] = {}

    @classmethod
    def from_config(cls, config: SessionConfig) -> SharedRows:
        store = cls(config.table)
        store.rows = cls.tables.setdefault(config.table, {})
        return store


class SharedSession(Session):
    store_class = SharedRows


def create_app(clock: FakeClock, table: str) -> Quart:
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY="s" * 32,
        TESTING=True,
        # Not a database URL any SQL driver serves: nothing may check it but a SQL store.
        SESSION_DB_URL="memory://sessions",
        SESSION_TABLE=table,
        SESSION_IDLE_TIMEOUT=600,
        SESSION_PRUNE_INTERVAL=3600,
    )
    SharedSession(app, clock=clock)

    @app.post("/login/<user>")
    async def login(user: str) -> str:
        session["user_id"] = user
        return "ok"

    @app.post("/visit")
    async def visit() -> str:
        session["visits"] = session.get("visits", 0) + 1
        return "ok"

    return app


async def quart_sessions(app: Quart, *args: str) -> tuple[int, str]:
    runner = app.test_cli_runner()
    result = await asyncio.to_thread(runner.invoke, args=["sessions", *args])
    return result.exit_code, result.output


async def test_requests_the_pruner_and_every_command_work_on_a_store_that_is_not_sql(
    clock: FakeClock,
) -> None:
    app = create_app(clock, "plugin_sessions")
    extension = app.extensions["quartsess"]
    rows = SharedRows.tables["plugin_sessions"]
    async with app.test_app() as test_app:
        laptop, phone = test_app.test_client(), test_app.test_client()
        await laptop.post("/login/ada")
        [laptop_session] = await extension.user_sessions("ada")
        handle = laptop_session.handle
        await phone.post("/login/ada")
        await test_app.test_client().post("/visit")  # an anonymous visitor
        assert len(rows) == 3

        code, output = await quart_sessions(app, "stats")
        assert code == 0, output
        assert re.search(r"^rows:\s+3$", output, re.M)
        assert "in this process's memory" in output

        code, output = await quart_sessions(app, "list", "--user", "ada")
        assert code == 0, output
        assert output.startswith("2 live sessions of user 'ada'.")
        assert handle in output

        code, output = await quart_sessions(app, "revoke", "--handle", handle)
        assert (code, output) == (0, "Revoked 1 session.\n")
        assert [info.handle for info in await extension.user_sessions("ada")] != [handle]
        assert len(await extension.user_sessions("ada")) == 1

        clock.advance(601)  # the other two expire
        code, output = await quart_sessions(app, "prune")
        assert (code, output) == (0, "Pruned 2 expired sessions.\n")
        assert rows == {}

        await laptop.post("/visit")  # a new anonymous session: the old one was revoked
        clock.advance(601)
        pruner = extension.pruner_for(app)
        pruner.wake()
        assert await pruner.next_run() == 1
        assert rows == {}

        code, output = await quart_sessions(app, "migrate")
        assert code == 1
        assert "has no migrations" in output
