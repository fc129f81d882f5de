"""The store contract: what the save protocol, the pruner and the CLI may ask of a store.

A store keeps rows of ciphertext keyed by the SHA-256 of a session ID; it never sees a
session ID, a session's data or Quart. Every method raises
:class:`~quartsess.SessionStoreUnavailable` when the database cannot answer, and only
:class:`~quartsess.StoreError` subclasses in any case (drivers' errors chained as the
cause); "no such row" is never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Self

from ..errors import StoreError

if TYPE_CHECKING:
    from ..config import SessionConfig

#: What a store raises: "the store cannot answer now" (a 503), never "no session".
STORE_ERRORS: tuple[type[BaseException], ...] = (StoreError,)


@dataclass(frozen=True, slots=True)
class StoredSession:
    """One row of the sessions table: epoch seconds, the payload as ciphertext, and for
    user sessions the handle, the keyed hash of the user and the encrypted client."""

    id_hash: str = field(repr=False)
    payload: bytes = field(repr=False)
    version: int
    created_at: int
    touched_at: int
    expires_at: int
    handle: str | None = None
    user_hash: str | None = field(default=None, repr=False)
    client: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Size of the sessions table: rows, rows past their deadline, payload bytes."""

    rows: int
    expired_rows: int
    payload_bytes: int
    largest_payload_bytes: int


class SessionStore(Protocol):
    """The per-request operations: each is one statement (one round trip)."""

    @property
    def writes_inline(self) -> bool:
        """True if writes finish without ever waiting on the event loop (nothing in them
        can be cancelled half-way or time out), so they need no task of their own."""
        ...

    async def prepare(self, *, create_table: bool) -> None:
        """Check that the database answers and, if asked, create the table when missing
        (otherwise raise :class:`~quartsess.TableMissing` when it is). Cheap after
        the first success; safe when several workers start at once."""
        ...

    async def load(self, id_hash: str) -> StoredSession | None:
        """The row without its ``client`` (only listing reads that), or ``None`` if there
        is none (expired rows are returned as they are: expiry is the save protocol's
        policy)."""
        ...

    async def insert(self, row: StoredSession) -> None:
        """Add a new row (its ``id_hash`` is fresh: 256 random bits)."""
        ...

    async def update(self, row: StoredSession, *, previous: StoredSession) -> bool:
        """Write ``row`` (its payload, times, handle, user hash and client) with
        ``row.version`` in place of ``previous`` (the same row as loaded) if the stored row
        still has ``previous.version``. Fields equal to ``previous``'s may be left as
        stored (a touch may have moved the times since). False if the row changed under
        us or is gone: an update never re-creates a row."""
        ...

    async def touch(
        self, id_hash: str, *, touched_at: int, expires_at: int, client: bytes | None
    ) -> bool:
        """Extend the idle deadline and record the client, whatever the version; False
        if the row is gone."""
        ...

    async def delete(self, id_hash: str) -> bool:
        """Delete the row; False if there was none."""
        ...

    async def delete_version(self, id_hash: str, version: int) -> bool:
        """Delete the row if it still has ``version``; False if it changed or is gone."""
        ...

    async def take_lease(
        self, id_hash: str, *, version: int, owner: str, until: int, now: int
    ) -> bool:
        """Hold the row's lease for ``owner`` until ``until`` (epoch seconds), if the row
        still has ``version`` and nobody holds the lease at ``now`` (none, or expired).
        False otherwise, or if the row is gone. The lease is independent of every other
        write: content writes and touches leave it, deleting the row ends it."""
        ...

    async def renew_lease(self, id_hash: str, *, owner: str, until: int) -> bool:
        """Move the end of ``owner``'s lease to ``until``; False if ``owner`` lost it."""
        ...

    async def release_lease(self, id_hash: str, *, owner: str) -> None:
        """End ``owner``'s lease (nothing if another holds it now, or the row is gone)."""
        ...

    async def load_many(self, id_hashes: Sequence[str]) -> list[StoredSession]:
        """The rows of these ID hashes that exist, without payloads and clients, in one
        statement: a worker's periodic check of its open websockets' sessions."""
        ...

    async def close(self) -> None:
        """Close every connection; the store opens new ones if used again."""
        ...

    def keep_connections(self, keep: bool) -> None:
        """Keep connections open between statements (``True`` while the app serves).
        With ``False``, the default, each is closed after use: an app driven by
        ``test_client()`` without ``test_app()`` never shuts down, and must leave no
        connection for the garbage collector."""
        ...


class MaintainedStore(SessionStore, Protocol):
    """A store the pruner and the ``quart sessions`` commands can work on."""

    @classmethod
    def from_config(cls, config: SessionConfig) -> Self:
        """The store an app's validated settings describe."""
        ...

    @property
    def backend(self) -> str:
        """The kind of database: ``"sqlite"``, ``"postgresql"``, ``"mysql"``, ``"memory"``."""
        ...

    @property
    def prune_batch_size(self) -> int:
        """Rows the pruner deletes per :meth:`delete_expired`."""
        ...

    @property
    def prune_rest(self) -> float:
        """How long the pruner rests after a batch, as a multiple of the batch's time."""
        ...

    def describe(self) -> str:
        """Which table in which database, for messages (any password masked)."""
        ...

    async def check_table(self) -> None:
        """Raise :class:`~quartsess.TableMissing` (saying what is missing: the table, or
        the database) if there is no sessions table; creates nothing, not even a file."""
        ...

    async def delete_expired(self, now: int, limit: int) -> int:
        """Delete at most ``limit`` rows whose ``expires_at`` is at or before ``now``;
        returns how many. Safe to run from several processes at once."""
        ...

    def try_lock(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Hold a lock called ``name``, shared by every process using this table, for the
        block if nobody holds it; yields whether it was acquired. A store that cannot
        lock across processes yields True, and callers must be correct concurrently."""
        ...

    async def stats(self, now: int) -> StoreStats: ...

    async def scan(self, after: str, limit: int) -> list[StoredSession]:
        """Up to ``limit`` rows whose id_hash sorts after ``after`` (``""`` to start), in
        id_hash order: walks the table in batches."""
        ...

    async def replace_payloads(self, rows: Sequence[StoredSession]) -> int:
        """Store each row's ``payload``, ``user_hash`` and ``client`` if the stored row
        still has that ``version`` (kept as it is); returns how many were replaced."""
        ...

    async def sessions_of(self, user_hashes: Sequence[str]) -> list[StoredSession]:
        """Every row whose ``user_hash`` is one of ``user_hashes`` (live or not), whole:
        for listing a user's sessions."""
        ...

    async def delete_handles(
        self, handles: Sequence[str], *, user_hashes: Sequence[str] | None = None
    ) -> list[StoredSession]:
        """Delete the rows with these handles (only those of ``user_hashes``, when
        given); returns the rows this call deleted (with payloads, without clients), so
        that each end is reported once even when two processes delete at once."""
        ...

    async def delete_user(
        self, user_hashes: Sequence[str], *, except_handle: str | None = None
    ) -> list[StoredSession]:
        """Delete every row of ``user_hashes`` but the one with ``except_handle``;
        returns the rows this call deleted, as :meth:`delete_handles` does."""
        ...
