"""The save protocol, apart from Quart: load a session's row, decide whether a request's
session needs a write, write it (versioned, merging lost races, retiring a regenerated
ID), and say what happened so the caller can set or delete the cookie.

It knows the store contract and the codec; it never sees a request, a response or a
cookie setting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from .errors import InvalidPayload, SaveConflict
from .ids import hash_session_id, log_id, new_session_id
from .stores.base import STORE_ERRORS, SessionStore, StoredSession
from .users import Client, UserSessions, new_handle, user_of

if TYPE_CHECKING:
    from .clock import Clock
    from .codec import PayloadCodec
    from .config import SessionConfig

logger = logging.getLogger("quartsess")

# A save that keeps losing races gives up with a 503 instead of looping forever.
# Each failed attempt means another writer of the same session succeeded, so attempts
# are bounded by the number of concurrent writers; this bound only stops pathologies.
MAX_SAVE_ATTEMPTS = 64
# Sealed client records kept for reuse (oldest dropped first): about 200 bytes each.
_SEALED_CLIENTS_KEPT = 4096

#: A save that fails with one of these answers 503 and leaves the stored row as it was.
SAVE_FAILURES: tuple[type[BaseException], ...] = (*STORE_ERRORS, SaveConflict)

# Values that cannot change without an assignment (which sets ``modified``).
_IMMUTABLE_SCALARS = frozenset({str, int, float, bool, type(None)})


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a session knows of its row: the cookie ID, the row as last read or written,
    and the serialized content the row holds."""

    sid: str
    record: StoredSession
    plaintext: bytes
    user: str | None = None


class SaveResult(Enum):
    """What a save did, which decides what happens to the cookie."""

    UNCHANGED = "unchanged"  # nothing written
    CREATED = "created"  # stored under a new ID: the cookie must be set
    UPDATED = "updated"  # new content written to the row
    TOUCHED = "touched"  # only the idle deadline extended
    DELETED = "deleted"  # the session was emptied and its row deleted: delete the cookie
    GONE = "gone"  # the row went meanwhile (logout, login, prune): leave the cookie alone
    NOT_STORED = "not stored"  # a new session that no cookie can be sent for


@dataclass(frozen=True, slots=True)
class SaveOutcome:
    """A save's result, the row as it now is (``None``: no row), and the content the
    session must adopt when a concurrent save was merged in (``None``: keep its own)."""

    result: SaveResult
    loaded: Loaded | None
    merged: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """When a session ends: ``idle_timeout`` seconds after it was last touched
    (``anonymous_idle_timeout`` for a session bound to no user), and
    ``absolute_timeout`` seconds after it was created (``None``: no such limit). The
    idle deadline is written at most once per ``touch_interval`` seconds."""

    idle_timeout: int
    absolute_timeout: int | None
    touch_interval: int
    anonymous_idle_timeout: int | None = None  # None: the idle timeout

    @classmethod
    def from_config(cls, config: SessionConfig) -> ExpiryPolicy:
        return cls(
            config.idle_timeout,
            config.absolute_timeout,
            config.touch_interval,
            config.anonymous_idle_timeout,
        )

    def idle_for(self, bound: bool) -> int:
        if bound or self.anonymous_idle_timeout is None:
            return self.idle_timeout
        return self.anonymous_idle_timeout

    def expiry(self, record: StoredSession) -> int:
        """When ``record`` ends under the current settings (which may have been
        shortened since it was written)."""
        end = min(record.expires_at, record.touched_at + self.idle_for(bool(record.user_hash)))
        if self.absolute_timeout is not None:
            end = min(end, record.created_at + self.absolute_timeout)
        return end

    def is_live(self, record: StoredSession, now: int) -> bool:
        """Whether ``record`` is live at ``now``."""
        return now < self.expiry(record)

    def deadline(self, now: int, created_at: int, *, bound: bool = True) -> int:
        """The ``expires_at`` to write at ``now`` for a session created at
        ``created_at`` (``bound``: to a user)."""
        deadline = now + self.idle_for(bound)
        if self.absolute_timeout is not None:
            deadline = min(deadline, created_at + self.absolute_timeout)
        return deadline

    def touch_due(self, record: StoredSession, now: int) -> bool:
        return now - record.touched_at >= self.touch_interval

    def moved_deadline(self, record: StoredSession, now: int, bound: bool) -> tuple[int, int]:
        """``touched_at`` and ``expires_at`` for a content write of ``record`` at ``now``
        (``bound``: to a user, after the write): moved as a touch moves them (at most once
        per ``touch_interval``), so most writes leave the indexed deadline alone. An
        earlier deadline, or one under another idle timeout (the session was bound to a
        user or unbound without a new ID), is written at once."""
        deadline = self.deadline(now, record.created_at, bound=bound)
        if (
            self.touch_due(record, now)
            or deadline < record.expires_at
            or self.idle_for(bound) != self.idle_for(bool(record.user_hash))
        ):
            return now, deadline
        return record.touched_at, record.expires_at


class SessionSaver:
    """Loads and saves sessions in ``store``, sealing payloads with ``codec``.

    ``user_key`` names the session key that binds a session to a user (``None``: no
    binding); a change of the user at save time renews the ID as ``regenerate`` does.
    ``users`` caps a user's sessions when one becomes bound (``SESSION_MAX_PER_USER``)."""

    def __init__(
        self,
        store: SessionStore,
        codec: PayloadCodec,
        policy: ExpiryPolicy,
        clock: Clock,
        *,
        create_table: bool = True,
        user_key: str | None = None,
        users: UserSessions | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.policy = policy
        self.clock = clock
        self.create_table = create_table
        self.user_key = user_key
        self.users = users
        # Keyed by one string, not a tuple with the Client: str and bytes are not tracked
        # by the garbage collector, so a full cache adds one object to every full
        # collection's walk instead of some 8,000.
        self._sealed_clients: dict[str, bytes] = {}

    # -- load -------------------------------------------------------------------------

    async def load(
        self, sid: str, id_hash: str | None = None
    ) -> tuple[Loaded, dict[str, Any]] | None:
        """The live session named by ``sid`` and its data, or ``None`` if it is unknown,
        expired or does not open (logged as a security warning). Store errors propagate."""
        id_hash = id_hash or hash_session_id(sid)
        await self.store.prepare(create_table=self.create_table)
        record = await self.store.load(id_hash)
        if record is None or not self.policy.is_live(record, int(self.clock())):
            if record is not None:
                self.codec.forget(record.payload)
            logger.info("session %s is unknown or expired; a new session starts", log_id(id_hash))
            return None
        try:
            data, plaintext = self.codec.open(id_hash, record.payload)
        except InvalidPayload as error:
            logger.warning(
                "security: session %s was rejected and replaced by a new one: %s",
                log_id(id_hash),
                error,
            )
            return None
        return Loaded(sid, record, plaintext, user_of(data, self.user_key)), data

    # -- decide -------------------------------------------------------------------------

    def user_changed(self, loaded: Loaded | None, data: Mapping[str, Any]) -> bool:
        """Whether the user at ``user_key`` differs from the one the session loaded with
        (set, removed or replaced): the save then moves the session to a new ID."""
        return loaded is not None and user_of(data, self.user_key) != loaded.user

    def plan(
        self,
        loaded: Loaded | None,
        data: Mapping[str, Any],
        *,
        modified: bool,
        regenerate: bool,
    ) -> bytes | Literal[False] | None:
        """Whether :meth:`save` would write, decided without awaiting anything: False
        when it would not; otherwise the serialized content, or None when not computed
        here. Lets the common read-only request finish without a task."""
        if loaded is None:
            return False if not data else None
        if (
            regenerate
            or not data
            or self.policy.touch_due(loaded.record, int(self.clock()))
            or self.user_changed(loaded, data)
        ):
            return None
        if not modified and all(type(value) in _IMMUTABLE_SCALARS for value in data.values()):
            # Nothing was assigned or deleted, and no value can change in place.
            return False
        plaintext = self.codec.serialize(dict(data))
        return False if plaintext == loaded.plaintext else plaintext

    # -- write --------------------------------------------------------------------------

    async def save(
        self,
        loaded: Loaded | None,
        data: dict[str, Any],
        *,
        regenerate: bool = False,
        can_send_cookie: bool = True,
        plaintext: bytes | None = None,
        client: Client | None = None,
    ) -> SaveOutcome:
        """Store ``data`` for a session that loaded ``loaded`` (``None``: a new one).

        Writes only if the content changed, or to extend the idle deadline once per
        touch interval. ``regenerate`` (or a change of the user) moves the data to a new
        ID and deletes the old row. Without ``can_send_cookie`` (after a websocket) a new
        session is not stored and a new ID is not given. ``client`` is recorded, sealed,
        whenever the row of a session bound to a user is written; other writes clear
        it. Raises one of :data:`SAVE_FAILURES`."""
        now = int(self.clock())
        if not data:
            if loaded is None:
                return SaveOutcome(SaveResult.UNCHANGED, None)
            await self.store.delete(loaded.record.id_hash)
            self.codec.forget(loaded.record.payload)
            return SaveOutcome(SaveResult.DELETED, None)
        if plaintext is None:
            plaintext = self.codec.serialize(data)
        regenerate = regenerate or self.user_changed(loaded, data)
        if not can_send_cookie and (loaded is None or regenerate):
            if loaded is None:
                logger.warning(
                    "a new session was changed in a websocket handler; it is not stored "
                    "because no cookie can be sent over a websocket"
                )
                return SaveOutcome(SaveResult.NOT_STORED, None)
            logger.warning(
                "session.regenerate() (or a change of the user) is ignored in a websocket "
                "handler (no cookie can be sent); the changes are stored under the current ID"
            )
            regenerate = False
        if loaded is None or regenerate:
            return await self._store_new(loaded, data, plaintext, now, client)

        record = loaded.record
        if plaintext != loaded.plaintext:
            return await self._write_changes(loaded, data, plaintext, now, client)
        if not self.policy.touch_due(record, now):
            return SaveOutcome(SaveResult.UNCHANGED, loaded)
        if record.handle is None or (loaded.user is not None and record.user_hash is None):
            # A row written before user sessions existed: the touch fills in its handle
            # and user, so the user's sessions can be listed and revoked.
            return await self._write_changes(loaded, data, plaintext, now, client)
        expires = self.policy.deadline(now, record.created_at, bound=loaded.user is not None)
        sealed = self._seal_client(record.id_hash, client, bound=loaded.user is not None)
        if not await self.store.touch(
            record.id_hash, touched_at=now, expires_at=expires, client=sealed
        ):
            return SaveOutcome(SaveResult.GONE, None)
        touched = replace(record, touched_at=now, expires_at=expires, client=sealed)
        return SaveOutcome(SaveResult.TOUCHED, replace(loaded, record=touched))

    def _seal_client(self, id_hash: str, client: Client | None, *, bound: bool) -> bytes | None:
        """The client column a write stores: ``client`` sealed, or ``None`` (which clears
        what an earlier write recorded) when recording is off or the row has no user.
        Only a user's sessions are ever listed, so an anonymous visitor's User-Agent and
        address would be kept, and paid for with an encryption per new session, for no one."""
        if client is None or not bound:
            return None
        key = id_hash + repr((client.user_agent, client.ip_address))  # one unambiguous str
        sealed = self._sealed_clients.get(key)
        if sealed is None:
            # Encrypting costs more than the rest of a write; the same browser writing
            # the same row again records the same thing, so its ciphertext is reused.
            sealed = self.codec.seal_client(id_hash, client.user_agent, client.ip_address)
            if len(self._sealed_clients) >= _SEALED_CLIENTS_KEPT:
                self._sealed_clients.pop(next(iter(self._sealed_clients)))
            self._sealed_clients[key] = sealed
        return sealed

    def _user_hash(self, user: str | None, loaded: Loaded | None = None) -> str | None:
        if user is None:
            return None
        if loaded is not None and loaded.user == user and loaded.record.user_hash:
            return loaded.record.user_hash  # the same user: no new HMAC
        return self.codec.user_hash(user)

    async def _store_new(
        self,
        previous: Loaded | None,
        data: dict[str, Any],
        plaintext: bytes,
        now: int,
        client: Client | None,
    ) -> SaveOutcome:
        # The first write of a fresh deployment may come before any request with a cookie.
        await self.store.prepare(create_table=self.create_table)
        sid = new_session_id()
        id_hash = hash_session_id(sid)
        created_at = now
        merged: dict[str, Any] | None = None
        handle = new_handle()
        if previous is not None:
            self.codec.check_size(plaintext)  # before the old row goes
            retired = await self._retire(previous, data, now)
            if retired is None:
                # Logged out (or gone) while this request ran: a regenerate must not
                # bring it back under a new ID.
                return SaveOutcome(SaveResult.GONE, None)
            current, merged = retired
            self._forget_replaced(previous.record, current)  # that row is gone
            if merged is not None:
                data = merged
                plaintext = self.codec.serialize(merged)
            # A new ID does not restart the absolute timeout, nor rename the session.
            created_at = current.created_at
            handle = current.handle or handle
        user = user_of(data, self.user_key)
        record = StoredSession(
            id_hash=id_hash,
            payload=self.codec.seal(id_hash, plaintext),
            version=1,
            created_at=created_at,
            touched_at=now,
            expires_at=self.policy.deadline(now, created_at, bound=user is not None),
            handle=handle,
            user_hash=self._user_hash(user),
            client=self._seal_client(id_hash, client, bound=user is not None),
        )
        await self.store.insert(record)
        newly_bound = user is not None and (previous is None or previous.user != user)
        if newly_bound and self.users is not None and user is not None:
            await self.users.enforce_limit(user, keep_handle=handle)
        return SaveOutcome(SaveResult.CREATED, Loaded(sid, record, plaintext, user), merged)

    async def _retire(
        self, previous: Loaded, ours: dict[str, Any], now: int
    ) -> tuple[StoredSession, dict[str, Any] | None] | None:
        """Delete the row being regenerated if nobody changed it meanwhile; otherwise
        merge its newer content with ours first. Returns the row deleted and the merged
        content (``None``: ours as it was), or ``None`` if the row is gone.

        The old ID goes first: if we stop half-way the user is logged out, never left
        with a second live ID for the same data."""
        base = self._content_of(previous)
        current = previous.record
        merged: dict[str, Any] | None = None
        for _ in range(MAX_SAVE_ATTEMPTS):
            if await self.store.delete_version(current.id_hash, current.version):
                return current, merged
            newer = await self._reload(current.id_hash, now)
            if newer is None:
                return None
            current, theirs = newer
            merged = merge_changes(base, ours, theirs)
        raise SaveConflict(MAX_SAVE_ATTEMPTS, log_id(current.id_hash))

    async def _write_changes(
        self,
        loaded: Loaded,
        data: dict[str, Any],
        plaintext: bytes,
        now: int,
        client: Client | None,
    ) -> SaveOutcome:
        """Update the row; on a lost race, apply this request's changes (relative to what
        it loaded) onto the newer row, and retry."""
        current = loaded.record
        base: dict[str, Any] | None = None
        merged: dict[str, Any] | None = None
        handle = current.handle or new_handle()  # rows written before handles existed
        for _ in range(MAX_SAVE_ATTEMPTS):
            user = user_of(merged if merged is not None else data, self.user_key)
            touched_at, expires_at = self.policy.moved_deadline(current, now, user is not None)
            written = replace(
                current,
                payload=self.codec.seal(current.id_hash, plaintext),
                version=current.version + 1,
                touched_at=touched_at,
                expires_at=expires_at,
                handle=handle,
                user_hash=self._user_hash(user, loaded),
                client=self._seal_client(current.id_hash, client, bound=user is not None),
            )
            if await self.store.update(written, previous=current):
                self._forget_replaced(loaded.record, current)
                return SaveOutcome(
                    SaveResult.UPDATED, Loaded(loaded.sid, written, plaintext, user), merged
                )
            newer = await self._reload(current.id_hash, now)
            if newer is None:
                return SaveOutcome(SaveResult.GONE, None)
            current, theirs = newer
            if base is None:
                base = self._content_of(loaded)
            merged = merge_changes(base, data, theirs)
            if not merged:
                if await self.store.delete_version(current.id_hash, current.version):
                    self._forget_replaced(loaded.record, current)
                    return SaveOutcome(SaveResult.GONE, None)
                continue  # yet another write landed: merge onto that one
            plaintext = self.codec.serialize(merged)
            logger.debug("session %s: merged a concurrent save", log_id(current.id_hash))
        raise SaveConflict(MAX_SAVE_ATTEMPTS, log_id(current.id_hash))

    def _forget_replaced(self, *rows: StoredSession) -> None:
        for row in rows:
            self.codec.forget(row.payload)

    def _content_of(self, loaded: Loaded) -> dict[str, Any]:
        return self.codec.deserialize(loaded.plaintext) if loaded.plaintext else {}

    async def _reload(self, id_hash: str, now: int) -> tuple[StoredSession, dict[str, Any]] | None:
        """The row as it is now and its content, or ``None`` if gone, expired or unreadable."""
        newer = await self.store.load(id_hash)
        if newer is None or not self.policy.is_live(newer, now):
            return None
        try:
            theirs, _ = self.codec.open(newer.id_hash, newer.payload)
        except InvalidPayload as error:
            logger.warning(
                "security: session %s changed concurrently and the newer row does not "
                "open (%s); this request's changes were dropped",
                log_id(newer.id_hash),
                error,
            )
            return None
        return newer, theirs


def merge_changes(
    base: dict[str, Any],
    ours: dict[str, Any],
    theirs: dict[str, Any],
    same: Callable[[Any, Any], bool] | None = None,
) -> dict[str, Any]:
    """Apply the keys this request changed (relative to ``base``) onto ``theirs``:
    keys changed by only one side survive from that side; a key both changed takes ours.

    "Changed" means what the save means by it: a value that serializes differently, so
    ``True`` replaced by ``1`` or a list by a tuple is a change (``same`` decides)."""
    unchanged = same or same_value
    merged = dict(theirs)
    for key in base.keys() | ours.keys():
        if key in ours:
            if key not in base or not unchanged(base[key], ours[key]):
                merged[key] = ours[key]
        elif key in merged:
            del merged[key]
    return merged


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (so they serialize alike)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
