"""An in-memory store: the reference implementation of the store contract.

For the save protocol's own tests and for apps' tests that need no database
(``Session.store_class = MemoryStore``). Rows live in this process only: not for serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .base import StoredSession, StoreStats

if TYPE_CHECKING:
    from ..config import SessionConfig


class MemoryStore:
    """Session rows in a dict. Every method is atomic (nothing in it awaits)."""

    writes_inline = True
    backend = "memory"
    prune_batch_size = 1000
    prune_rest = 0.0

    def __init__(self, table: str = "quart_sessions") -> None:
        self.table_name = table
        self.rows: dict[str, StoredSession] = {}
        #: The lease of each row that has one: (owner, until).
        self.leases: dict[str, tuple[str, int]] = {}
        self._locks: set[str] = set()
        #: Called with each per-request operation's name before it runs, as
        #: :class:`~quartsess.stores.sql.SqlStore` does: for tests that count or
        #: interleave statements.
        self.statement_listeners: list[Callable[[str], None]] = []

    @classmethod
    def from_config(cls, config: SessionConfig) -> MemoryStore:
        return cls(config.table)

    def _before(self, name: str) -> None:
        for listener in self.statement_listeners:
            listener(name)

    async def prepare(self, *, create_table: bool) -> None:
        return None

    async def load(self, id_hash: str) -> StoredSession | None:
        self._before("load")
        row = self.rows.get(id_hash)
        return row if row is None or row.client is None else replace(row, client=None)

    async def insert(self, row: StoredSession) -> None:
        self._before("insert")
        if row.id_hash in self.rows:
            raise ValueError("a row with this id_hash exists")  # 2**-256: a caller's bug
        if row.handle is not None and any(r.handle == row.handle for r in self.rows.values()):
            raise ValueError("a row with this handle exists")  # unique, as in SQL
        self.rows[row.id_hash] = row

    async def update(self, row: StoredSession, *, previous: StoredSession) -> bool:
        self._before("update")
        stored = self.rows.get(row.id_hash)
        if stored is None or stored.version != previous.version:
            return False
        # As the SQL store does: what did not change since ``previous`` stays as stored.
        changed: dict[str, Any] = {}
        if row.handle != previous.handle or row.user_hash != previous.user_hash:
            changed.update(handle=row.handle, user_hash=row.user_hash)
        if row.expires_at != previous.expires_at or row.touched_at != previous.touched_at:
            changed.update(touched_at=row.touched_at, expires_at=row.expires_at)
        self.rows[row.id_hash] = replace(
            stored, payload=row.payload, version=row.version, client=row.client, **changed
        )
        return True

    async def touch(
        self, id_hash: str, *, touched_at: int, expires_at: int, client: bytes | None
    ) -> bool:
        self._before("touch")
        row = self.rows.get(id_hash)
        if row is None:
            return False
        self.rows[id_hash] = replace(
            row, touched_at=touched_at, expires_at=expires_at, client=client
        )
        return True

    async def delete(self, id_hash: str) -> bool:
        self._before("delete")
        self.leases.pop(id_hash, None)
        return self.rows.pop(id_hash, None) is not None

    async def delete_version(self, id_hash: str, version: int) -> bool:
        self._before("delete_version")
        row = self.rows.get(id_hash)
        if row is None or row.version != version:
            return False
        del self.rows[id_hash]
        self.leases.pop(id_hash, None)
        return True

    async def take_lease(
        self, id_hash: str, *, version: int, owner: str, until: int, now: int
    ) -> bool:
        self._before("take_lease")
        row = self.rows.get(id_hash)
        held = self.leases.get(id_hash)
        if row is None or row.version != version or (held is not None and held[1] > now):
            return False
        self.leases[id_hash] = (owner, until)
        return True

    async def renew_lease(self, id_hash: str, *, owner: str, until: int) -> bool:
        self._before("renew_lease")
        held = self.leases.get(id_hash)
        if id_hash not in self.rows or held is None or held[0] != owner:
            return False
        self.leases[id_hash] = (owner, until)
        return True

    async def release_lease(self, id_hash: str, *, owner: str) -> None:
        self._before("release_lease")
        held = self.leases.get(id_hash)
        if held is not None and held[0] == owner:
            del self.leases[id_hash]

    async def load_many(self, id_hashes: Sequence[str]) -> list[StoredSession]:
        self._before("load_many")
        rows = (self.rows.get(id_hash) for id_hash in set(id_hashes))
        return [replace(row, payload=b"", client=None) for row in rows if row is not None]

    async def close(self) -> None:
        return None

    def keep_connections(self, keep: bool) -> None:
        return None

    # -- maintenance -------------------------------------------------------------------

    def describe(self) -> str:
        return f"table {self.table_name!r} in this process's memory"

    async def check_table(self) -> None:
        return None

    async def delete_expired(self, now: int, limit: int) -> int:
        expired = sorted(
            (row for row in self.rows.values() if row.expires_at <= now),
            key=lambda row: row.expires_at,
        )[:limit]
        for row in expired:
            del self.rows[row.id_hash]
            self.leases.pop(row.id_hash, None)
        return len(expired)

    @asynccontextmanager
    async def try_lock(self, name: str) -> AsyncIterator[bool]:
        if name in self._locks:
            yield False
            return
        self._locks.add(name)
        try:
            yield True
        finally:
            self._locks.discard(name)

    async def stats(self, now: int) -> StoreStats:
        sizes = [len(row.payload) for row in self.rows.values()]
        expired = sum(1 for row in self.rows.values() if row.expires_at <= now)
        return StoreStats(len(sizes), expired, sum(sizes), max(sizes, default=0))

    async def scan(self, after: str, limit: int) -> list[StoredSession]:
        keys = sorted(key for key in self.rows if key > after)[:limit]
        return [self.rows[key] for key in keys]

    async def replace_payloads(self, rows: Sequence[StoredSession]) -> int:
        done = 0
        for new in rows:
            row = self.rows.get(new.id_hash)
            if row is not None and row.version == new.version:
                self.rows[new.id_hash] = replace(
                    row, payload=new.payload, user_hash=new.user_hash, client=new.client
                )
                done += 1
        return done

    async def sessions_of(self, user_hashes: Sequence[str]) -> list[StoredSession]:
        wanted = set(user_hashes)
        return [row for row in self.rows.values() if row.user_hash in wanted]

    async def delete_handles(
        self, handles: Sequence[str], *, user_hashes: Sequence[str] | None = None
    ) -> list[StoredSession]:
        wanted, users = set(handles), None if user_hashes is None else set(user_hashes)
        return self._delete_where(
            lambda row: row.handle in wanted and (users is None or row.user_hash in users)
        )

    async def delete_user(
        self, user_hashes: Sequence[str], *, except_handle: str | None = None
    ) -> list[StoredSession]:
        users = set(user_hashes)
        return self._delete_where(
            lambda row: (
                row.user_hash in users and (except_handle is None or row.handle != except_handle)
            )
        )

    def _delete_where(self, condition: Callable[[StoredSession], bool]) -> list[StoredSession]:
        gone = [row for row in self.rows.values() if condition(row)]
        for row in gone:
            del self.rows[row.id_hash]
            self.leases.pop(row.id_hash, None)
        return [replace(row, client=None) for row in gone]
