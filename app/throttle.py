"""Failed-login throttling that every worker of the server shares.

The counters live in a small SQLite file that all workers open (with a busy timeout): a
limit kept in one worker's memory would let a guesser simply spread the guesses over the
workers. An attempt is counted *before* the password hash runs, in one
transaction that also checks the limits, so parallel guessers cannot all slip through
before the count catches up; a login that succeeds gives its attempt back, so what is
limited is failed logins.

The file is the server's alone (mode 0600, its journals too), and its keys are HMACs under
a key derived from ``SECRET_KEY``: it holds no usernames or addresses, nor hashes that a
dictionary of usernames and of the 2**32 IPv4 addresses turns back into them. Only
``SECRET_KEY`` keys them, not ``SECRET_KEY_FALLBACKS``: a count lives one window, so after
a key rotation counting starts afresh under the new key while the old rows run out within
a window (a guesser gains at most one window's attempts, at a moment only the operator
chooses). Rows of older versions (unsalted SHA-256 keys) go the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS login_attempts ("
    " key TEXT PRIMARY KEY, attempts INTEGER NOT NULL, window_ends REAL NOT NULL"
    ") WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS login_attempts_window_ends ON login_attempts (window_ends)",
)
BUSY_TIMEOUT = 5.0  # seconds a worker waits for another one's write
KEY_PURPOSE = b"quartsess-demo login throttle keys v1"  # for app.secret.derive_key
# The file and the journals SQLite makes next to it (each with the file's mode).
FILE_SUFFIXES = ("", "-journal", "-wal", "-shm")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    """At most ``failures`` failed logins per ``window`` seconds, counted from the first."""

    failures: int
    window: float


class LoginThrottle:
    """Counts failed logins per account and per client address, in a shared SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        key: bytes,
        per_account: Limit,
        per_client: Limit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        # mode=rw: SQLite never makes the file itself (it would be 0644).
        self._uri = f"{self.path.resolve().as_uri()}?mode=rw"
        self._hmac_key = key
        self.per_account = per_account
        self.per_client = per_client
        self.clock = clock
        self._ready = False  # the file and its table are made on the first attempt

    async def reserve(self, account: str, client: str) -> int | None:
        """Count one login attempt, or refuse it: ``None`` if it may go ahead, else how
        many seconds until the limit that holds it back runs out (nothing is counted)."""
        limits = self._limits(account, client)
        return await asyncio.to_thread(self._reserve, limits, self.clock())

    async def refund(self, account: str, client: str) -> None:
        """Give back the attempt of a login that succeeded."""
        keys = [key for key, _ in self._limits(account, client)]
        await asyncio.to_thread(self._refund, keys, self.clock())

    def _limits(self, account: str, client: str) -> list[tuple[str, Limit]]:
        return [
            (self._key("account", account.casefold()), self.per_account),
            (self._key("client", client_network(client)), self.per_client),
        ]

    def _key(self, kind: str, value: str) -> str:
        # Fixed length, and nothing of the username or address without the secret key.
        message = f"{kind}\0{value}".encode()
        return hmac.new(self._hmac_key, message, hashlib.sha256).hexdigest()

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            make_private(self.path)
        # Autocommit mode: the transactions below are opened explicitly.
        connection = sqlite3.connect(
            self._uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
        )
        if not self._ready:
            try:
                self._set_up(connection)
            except BaseException:
                connection.close()
                raise
            self._ready = True
        return connection

    def _set_up(self, connection: sqlite3.Connection) -> None:
        # SQLite's default rollback journal, not WAL: every use of this file writes, so
        # WAL's reads beside a writer would buy nothing, and here every statement takes
        # the write lock first, so it waits through the busy timeout. Switching a new file
        # to WAL does not: workers doing it at once get SQLITE_BUSY at once (SQLite sees
        # a deadlock), which needs a retry loop. A file an older version switched to WAL
        # stays so (the mode is kept in the file) and works the same.
        for statement in SCHEMA:
            connection.execute(statement)

    def _reserve(self, limits: list[tuple[str, Limit]], now: float) -> int | None:
        connection = self._connect()
        try:
            # IMMEDIATE takes the write lock first: check and count are one step for
            # every worker.
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("DELETE FROM login_attempts WHERE window_ends <= ?", (now,))
            keys = [key for key, _ in limits]
            counted = dict(
                (key, (attempts, window_ends))
                for key, attempts, window_ends in connection.execute(
                    "SELECT key, attempts, window_ends FROM login_attempts WHERE key IN (?, ?)",
                    keys,
                )
            )
            waits = [
                counted[key][1] - now
                for key, limit in limits
                if key in counted and counted[key][0] >= limit.failures
            ]
            if not waits:
                connection.executemany(
                    "INSERT INTO login_attempts (key, attempts, window_ends) VALUES (?, 1, ?)"
                    " ON CONFLICT (key) DO UPDATE SET attempts = attempts + 1",
                    [(key, now + limit.window) for key, limit in limits],
                )
            connection.execute("COMMIT")
        finally:
            connection.close()
        return max(1, math.ceil(max(waits))) if waits else None

    def _refund(self, keys: list[str], now: float) -> None:
        connection = self._connect()
        try:
            connection.execute(
                "UPDATE login_attempts SET attempts = attempts - 1"
                " WHERE key IN (?, ?) AND attempts > 0 AND window_ends > ?",
                [*keys, now],
            )
        finally:
            connection.close()


def client_network(address: str) -> str:
    """The client's address; for IPv6 its /64, which one client usually has whole."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def make_private(path: Path) -> None:
    """Make ``path`` empty for the owner alone (SQLite takes an empty file for a new
    database) unless it exists; then take away the group's and others' access to it and
    its journals, which an older version left readable by all. Workers racing here are
    safe: exactly one creates the file, and nobody else does."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for suffix in FILE_SUFFIXES:
        file = path.with_name(path.name + suffix)
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o077:
                os.chmod(file, mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as error:  # another user's file: the counting still works
            logger.warning("%s stays readable by others: %s", file, error)
