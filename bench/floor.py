"""The floor any SQL session must spend: a bare SQL session store for the benchmark.

Quart's own signed cookie carries a random row key; the session's data is a JSON object in
one row of a two-column table. Per request: one primary-key SELECT when the cookie names
a row, and when the session changed one UPDATE (one INSERT for a new visitor), each in
autocommit. No encryption, no hashing of the key, no versions, no expiry, no merge, no
touch: what is left is the cost of keeping a session in SQL at all, on the fastest path
to each database (``sqlite3`` on the event loop, an asyncpg pool), as quartsess's own
stores use. ``bench.run`` serves it as the ``floor-sqlite`` and ``floor-postgresql``
targets and reports quartsess's ratios to it.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from typing import Any

from quart import Quart
from quart.sessions import SecureCookieSessionInterface, SessionMixin
from quart.wrappers import BaseRequestWebsocket, Response
from werkzeug.datastructures import CallbackDict

TABLE = "bench_floor"
ROW_KEY = "row"


class FloorSession(CallbackDict[str, Any], SessionMixin):
    """The session's data, and the key and JSON of its row as loaded."""

    def __init__(self, data: dict[str, Any], key: str | None, stored: str | None) -> None:
        def on_update(self: FloorSession) -> None:
            self.modified = True

        super().__init__(data, on_update)
        self.key = key
        self.stored = stored
        self.modified = False


class FloorSessionInterface(SecureCookieSessionInterface):
    """Quart's signed cookie holds ``{"row": key}``; the data is in the row."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._sqlite: sqlite3.Connection | None = None
        self._pool: Any = None

    async def start(self) -> None:
        if self.db_url.startswith("sqlite"):
            path = self.db_url.split(":///", 1)[1]
            self._sqlite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._sqlite.execute("PRAGMA journal_mode = WAL")
            self._sqlite.execute("PRAGMA synchronous = NORMAL")
            self._sqlite.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, data TEXT NOT NULL)"
            )
            return
        import asyncpg  # type: ignore[import-untyped]

        dsn = self.db_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
        await self._pool.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, data TEXT NOT NULL)"
        )

    async def stop(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pool is not None:
            await self._pool.close()

    async def _select(self, key: str) -> str | None:
        if self._sqlite is not None:
            row = self._sqlite.execute(f"SELECT data FROM {TABLE} WHERE key = ?", (key,))  # noqa: S608
            found = row.fetchone()
            return None if found is None else str(found[0])
        value = await self._pool.fetchval(f"SELECT data FROM {TABLE} WHERE key = $1", key)  # noqa: S608
        return None if value is None else str(value)

    async def _write(self, key: str, data: str, *, new: bool) -> None:
        if new:
            sql = f"INSERT INTO {TABLE} (key, data) VALUES (?, ?)"  # noqa: S608
        else:
            sql = f"UPDATE {TABLE} SET data = ? WHERE key = ?"  # noqa: S608
        args = (key, data) if new else (data, key)
        if self._sqlite is not None:
            self._sqlite.execute(sql, args)
            return
        await self._pool.execute(sql.replace("?", "$1", 1).replace("?", "$2", 1), *args)

    async def open_session(self, app: Quart, request: BaseRequestWebsocket) -> SessionMixin:
        cookie = await super().open_session(app, request)
        key = cookie.get(ROW_KEY) if cookie is not None else None
        if isinstance(key, str):
            stored = await self._select(key)
            if stored is not None:
                return FloorSession(json.loads(stored), key, stored)
        return FloorSession({}, None, None)

    async def save_session(
        self, app: Quart, session: SessionMixin, response: Response | None
    ) -> None:
        if not isinstance(session, FloorSession) or response is None or not session:
            return
        data = json.dumps(dict(session), separators=(",", ":"))
        if session.key is None:
            key = secrets.token_urlsafe(16)
            await self._write(key, data, new=True)
            signer = self.get_signing_serializer(app)
            assert signer is not None
            response.set_cookie(
                self.get_cookie_name(app),
                signer.dumps({ROW_KEY: key}),
                httponly=True,
                samesite="Lax",
                path=self.get_cookie_path(app),
            )
            response.vary.add("Cookie")
        elif data != session.stored:
            await self._write(session.key, data, new=False)


def install(app: Quart, db_url: str) -> None:
    """Serve ``app``'s sessions from the floor store on ``db_url``."""
    interface = FloorSessionInterface(db_url)
    app.session_interface = interface
    app.before_serving(interface.start)
    app.after_serving(interface.stop)
