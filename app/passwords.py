"""Passwords the demo's users changed, in a small SQLite file every worker shares (mode
0600, as the login throttle's): the demo hashes in ``app.auth`` stay the defaults."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from .throttle import BUSY_TIMEOUT, make_private

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS passwords (username TEXT PRIMARY KEY, hash TEXT NOT NULL)"
    " WITHOUT ROWID"
)


class PasswordStore:
    """The password hash each user set, if they changed it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # mode=rw: SQLite never makes the file itself (it would be 0644).
        self._uri = f"{self.path.resolve().as_uri()}?mode=rw"

    async def hash_for(self, username: str) -> str | None:
        return await asyncio.to_thread(self._hash_for, username)

    async def set(self, username: str, password_hash: str) -> None:
        await asyncio.to_thread(self._set, username, password_hash)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        make_private(self.path)
        connection = sqlite3.connect(
            self._uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
        )
        try:
            connection.execute(SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def _hash_for(self, username: str) -> str | None:
        connection = self._connect()
        try:
            row = connection.execute(
                "SELECT hash FROM passwords WHERE username = ?", (username,)
            ).fetchone()
        finally:
            connection.close()
        return None if row is None else str(row[0])

    def _set(self, username: str, password_hash: str) -> None:
        connection = self._connect()
        try:
            connection.execute(
                "INSERT INTO passwords (username, hash) VALUES (?, ?) "
                "ON CONFLICT (username) DO UPDATE SET hash = excluded.hash",
                (username, password_hash),
            )
        finally:
            connection.close()
