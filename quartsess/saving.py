"""The save protocol, apart from Quart: load a session's row; decide once, without
awaiting anything, what a request's session needs (a :class:`SaveDecision`); carry that
out (versioned, merging lost races, retiring a renewed ID); report the lifecycle
transition it made; say what happened so the caller can set or delete the cookie.

It knows the store contract, the codec and the lifecycle; it never sees a request, a
response or a cookie setting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import InvalidPayload, SaveConflict, StoreError
from .ids import hash_session_id, log_id, new_handle, new_session_id
from .owners import AUTHENTICATED_AT_KEY, Client, user_of
from .stores.base import StoredSession

if TYPE_CHECKING:
    from .clock import Clock
    from .codec import PayloadCodec
    from .expiry import ExpiryPolicy
    from .lifecycle import Lifecycle
    from .owners import OwnerKeys
    from .stores.base import SessionStore
    from .users import UserSessions

logger = logging.getLogger("quartsess")

# A save that keeps losing races gives up with a 503 instead of looping forever.
# Each failed attempt means another writer of the same session succeeded, so attempts
# are bounded by the number of concurrent writers; this bound only stops pathologies.
MAX_SAVE_ATTEMPTS = 64
# Sealed client records kept for reuse (oldest dropped first): about 200 bytes each.
_SEALED_CLIENTS_KEPT = 4096

#: A save that fails with one of these answers 503 and leaves the stored row as it was.
SAVE_FAILURES: tuple[type[BaseException], ...] = (StoreError, SaveConflict)

# Values that cannot change without an assignment (which sets ``modified``).
_IMMUTABLE_SCALARS = frozenset({str, int, float, bool, type(None)})


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a session knows of its row: the cookie ID, the row as last read or written,
    the serialized content the row holds, and the user it belongs to."""

    sid: str
    record: StoredSession
    plaintext: bytes
    user: str | None = None


class SaveResult(Enum):
    """What a save did, as the visitor sees it; it decides what the cookie does."""

    #: The session keeps its ID (nothing written, or its content or deadline written).
    KEPT = "kept"
    #: Stored under a new ID (a new session, or a renewal): the cookie must be set.
    ISSUED = "issued"
    #: The session was emptied and its row deleted (a logout): delete the cookie.
    ENDED = "ended"
    #: Nothing stored: the row went meanwhile (a logout, a login or an expiry in another
    #: request), or a new session that no cookie can carry. Leave the cookie alone.
    NOT_STORED = "not stored"


class Write(Enum):
    """The write a save decided on."""

    NOTHING = "nothing"
    END = "end"  # delete the row: a logout
    ISSUE = "issue"  # store under a new ID, retiring the loaded row if there is one
    UPDATE = "update"  # write the new content to the row
    TOUCH = "touch"  # only extend the idle deadline


class SaveDecision(NamedTuple):
    """What a save will do, decided before anything is awaited: ``write`` to the row
    ``loaded`` (with the ``data``, serialized as ``plaintext``, and the ``client`` to
    record), and for a decision to write nothing, its result (the session keeps its row)."""

    write: Write
    loaded: Loaded | None
    data: dict[str, Any] | None = None
    plaintext: bytes = b""
    client: Client | None = None
    result: SaveResult = SaveResult.KEPT
    #: The save stamped the data (``AUTHENTICATED_AT_KEY``): the session takes it on.
    stamped: bool = False

    @property
    def writes(self) -> bool:
        return self.write is not Write.NOTHING


#: The decisions to write nothing (the common read-only request): made once, not per save.
NOTHING_TO_WRITE = SaveDecision(Write.NOTHING, None)
NOTHING_STORED = SaveDecision(Write.NOTHING, None, result=SaveResult.NOT_STORED)


@dataclass(frozen=True, slots=True)
class SaveOutcome:
    """A save's result, the row as it now is (``None``: no row), and the content the
    session must adopt when a concurrent save was merged in (``None``: keep its own)."""

    result: SaveResult
    loaded: Loaded | None
    merged: dict[str, Any] | None = None


class SessionSaver:
    """Loads and saves sessions in ``store``, sealing payloads with ``codec``.

    ``user_key`` names the session key that binds a session to a user (``None``: no
    binding); a change of the user at save time renews the ID as ``regenerate`` does.
    ``users`` caps a user's sessions when one becomes bound (``SESSION_MAX_PER_USER``).
    Every session that starts, changes user or ends is reported to ``lifecycle``."""

    def __init__(
        self,
        store: SessionStore,
        codec: PayloadCodec,
        owners: OwnerKeys,
        policy: ExpiryPolicy,
        lifecycle: Lifecycle,
        clock: Clock,
        *,
        create_table: bool = True,
        user_key: str | None = None,
        users: UserSessions | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.owners = owners
        self.policy = policy
        self.lifecycle = lifecycle
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
        expired (then ended) or does not open (logged as a security warning). Store
        errors propagate."""
        id_hash = id_hash or hash_session_id(sid)
        await self.store.prepare(create_table=self.create_table)
        record = await self.store.load(id_hash)
        if record is None:
            logger.info("session %s is unknown; a new session starts", log_id(id_hash))
            return None
        if not self.policy.is_live(record, int(self.clock())):
            logger.info("session %s has expired; a new session starts", log_id(id_hash))
            await self._end_expired(record)
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

    async def _end_expired(self, record: StoredSession) -> None:
        try:
            await self.lifecycle.end_expired(record)
        except StoreError as error:
            # The visitor gets a new session either way; the pruner deletes the row later.
            logger.warning("an expired session's row was left to the pruner: %s", error)

    # -- decide -------------------------------------------------------------------------

    def user_changed(self, loaded: Loaded | None, data: Mapping[str, Any]) -> bool:
        """Whether the user at ``user_key`` differs from the one the session loaded with
        (set, removed or replaced): the save then moves the session to a new ID."""
        return loaded is not None and user_of(data, self.user_key) != loaded.user

    def decide(
        self,
        loaded: Loaded | None,
        data: dict[str, Any],
        *,
        modified: bool = True,
        regenerate: bool = False,
        can_send_cookie: bool = True,
        client: Client | None = None,
    ) -> SaveDecision:
        """What saving ``data`` for a session that loaded ``loaded`` (``None``: a new
        one) must write, decided without awaiting anything.

        Writes only if the content changed, or to extend the idle deadline once per touch
        interval. ``regenerate`` (or a change of the user) moves the data to a new ID and
        deletes the old row. Without ``can_send_cookie`` (after a websocket) a new
        session is not stored and a new ID is not given. ``client`` is recorded, sealed,
        whenever the row of a session bound to a user is written. Raises
        :class:`~quartsess.SessionTooLarge` or
        :class:`~quartsess.SessionNotSerializable` for content that cannot be stored."""
        if not data:
            return NOTHING_TO_WRITE if loaded is None else SaveDecision(Write.END, loaded)
        touch_due = loaded is not None and self.policy.touch_due(loaded.record, int(self.clock()))
        renew = regenerate or self.user_changed(loaded, data)
        if loaded is not None and not (renew or touch_due):
            # The common request of a stored session: it writes only if its content changed.
            if not modified and all(type(value) in _IMMUTABLE_SCALARS for value in data.values()):
                return NOTHING_TO_WRITE  # nothing could have changed
            plaintext = self.codec.serialize(data)
            if plaintext == loaded.plaintext:
                return NOTHING_TO_WRITE
            self.codec.check_size(plaintext)
            return SaveDecision(Write.UPDATE, loaded, data, plaintext, client)
        data, stamped = self._stamped(loaded, data, renewed=regenerate)
        plaintext = self.codec.serialize(data)
        self.codec.check_size(plaintext)  # before anything is written or retired
        if not can_send_cookie and (loaded is None or renew):
            if loaded is None:
                logger.warning(
                    "a new session was changed in a websocket handler; it is not stored "
                    "because no cookie can be sent over a websocket"
                )
                return NOTHING_STORED
            logger.warning(
                "session.regenerate() (or a change of the user) is ignored in a websocket "
                "handler (no cookie can be sent); the changes are stored under the current ID"
            )
            renew = False
        if loaded is None or renew:
            return SaveDecision(Write.ISSUE, loaded, data, plaintext, client, stamped=stamped)
        record = loaded.record
        if (
            plaintext != loaded.plaintext
            or record.handle is None
            or (loaded.user is not None and record.user_hash is None)
        ):
            # Changed content; or a row written before user sessions existed, which the
            # write gives a handle and a user so it can be listed and revoked.
            return SaveDecision(Write.UPDATE, loaded, data, plaintext, client, stamped=stamped)
        if touch_due:
            return SaveDecision(Write.TOUCH, loaded, data, plaintext, client)
        return NOTHING_TO_WRITE

    def _stamped(
        self, loaded: Loaded | None, data: dict[str, Any], *, renewed: bool = False
    ) -> tuple[dict[str, Any], bool]:
        """``data`` with its authentication time as the user binding says: now when the
        session becomes bound to a user, changes user, or is renewed with a user and no
        time (``clear()`` then the same user: a login; a bare ``regenerate()`` keeps the
        time); none when it is bound to none; as it was otherwise. And whether that
        changed it."""
        user = user_of(data, self.user_key)
        stamp = data.get(AUTHENTICATED_AT_KEY)
        if user is None:
            wanted = None
        elif loaded is None or loaded.user != user or (renewed and stamp is None):
            wanted = int(self.clock())
        else:
            return data, False
        if wanted == stamp:
            return data, False
        stamped = dict(data)
        if wanted is None:
            del stamped[AUTHENTICATED_AT_KEY]
        else:
            stamped[AUTHENTICATED_AT_KEY] = wanted
        return stamped, True

    # -- act ----------------------------------------------------------------------------

    async def carry_out(self, decision: SaveDecision) -> SaveOutcome:
        """Write what ``decision`` says. Raises one of :data:`SAVE_FAILURES`."""
        loaded, data = decision.loaded, decision.data or {}
        now = int(self.clock())
        if decision.write is Write.NOTHING:  # pragma: no cover - callers write nothing
            raise ValueError("a decision to write nothing has nothing to carry out")
        if decision.write is Write.ISSUE:
            outcome = await self._issue(loaded, data, decision.plaintext, now, decision.client)
            return _with_stamp(outcome, decision)
        if loaded is None:  # pragma: no cover - decide() never asks this of a new session
            raise ValueError(f"{decision.write.value} needs a stored session")
        if decision.write is Write.END:
            await self.lifecycle.end(loaded.record, "logout", user=loaded.user)
            return SaveOutcome(SaveResult.ENDED, None)
        if decision.write is Write.UPDATE:
            outcome = await self._update(loaded, data, decision.plaintext, now, decision.client)
            return _with_stamp(outcome, decision)
        return await self._touch(loaded, now, decision.client)

    async def save(
        self,
        loaded: Loaded | None,
        data: dict[str, Any],
        *,
        regenerate: bool = False,
        can_send_cookie: bool = True,
        client: Client | None = None,
    ) -> SaveOutcome:
        """:meth:`decide`, then :meth:`carry_out`: save ``data`` as a request would."""
        decision = self.decide(
            loaded,
            data,
            regenerate=regenerate,
            can_send_cookie=can_send_cookie,
            client=client,
        )
        if not decision.writes:
            kept = decision.result is SaveResult.KEPT
            return SaveOutcome(decision.result, loaded if kept else None)
        return await self.carry_out(decision)

    async def keep_alive(self, row: StoredSession, client: Client | None) -> bool:
        """Extend the idle deadline of ``row`` (as read now) if its touch is due, as a
        request would: a session with an open websocket is in use. False if the row went
        meanwhile."""
        now = int(self.clock())
        if not self.policy.touch_due(row, now):
            return True
        bound = row.user_hash is not None
        expires = self.policy.deadline(now, row.created_at, bound=bound)
        sealed = self._seal_client(row.id_hash, client, bound=bound)
        return await self.store.touch(
            row.id_hash, touched_at=now, expires_at=expires, client=sealed
        )

    async def _touch(self, loaded: Loaded, now: int, client: Client | None) -> SaveOutcome:
        record = loaded.record
        bound = loaded.user is not None
        expires = self.policy.deadline(now, record.created_at, bound=bound)
        sealed = self._seal_client(record.id_hash, client, bound=bound)
        if not await self.store.touch(
            record.id_hash, touched_at=now, expires_at=expires, client=sealed
        ):
            return SaveOutcome(SaveResult.NOT_STORED, None)
        touched = replace(record, touched_at=now, expires_at=expires, client=sealed)
        return SaveOutcome(SaveResult.KEPT, replace(loaded, record=touched))

    async def _issue(
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
        previous_user: str | None = None
        if previous is not None:
            retired = await self._retire(previous, data, now)
            if retired is None:
                # Logged out (or gone) while this request ran: a renewal must not bring
                # it back under a new ID.
                return SaveOutcome(SaveResult.NOT_STORED, None)
            current, previous_user, merged = retired
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
        if previous is None:
            await self.lifecycle.created(handle, user)
        elif user != previous_user:
            await self.lifecycle.user_changed(handle, user, previous_user)
        if (
            user is not None
            and self.users is not None
            and (previous is None or previous_user != user)
        ):
            try:
                await self.users.enforce_limit(user, keep_handle=handle)
            except StoreError as error:
                # The session is stored (and, on a login, its old row gone): failing the
                # save now would drop the new cookie and log the user out. The cap is
                # enforced again at the user's next login.
                logger.warning("SESSION_MAX_PER_USER not enforced at this login: %s", error)
        return SaveOutcome(SaveResult.ISSUED, Loaded(sid, record, plaintext, user), merged)

    async def _retire(
        self, previous: Loaded, ours: dict[str, Any], now: int
    ) -> tuple[StoredSession, str | None, dict[str, Any] | None] | None:
        """Delete the row being renewed if nobody changed it meanwhile; otherwise merge
        its newer content with ours first. Returns the row deleted, its user, and the
        merged content (``None``: ours as it was), or ``None`` if the row is gone.

        The old ID goes first: if we stop half-way the user is logged out, never left
        with a second live ID for the same data."""
        base = self.content_of(previous)
        current, current_user = previous.record, previous.user
        merged: dict[str, Any] | None = None
        for _ in range(MAX_SAVE_ATTEMPTS):
            if await self.store.delete_version(current.id_hash, current.version):
                return current, current_user, merged
            newer = await self._reload(current.id_hash, now)
            if newer is None:
                return None
            current, theirs = newer
            current_user = user_of(theirs, self.user_key)
            merged = merge_changes(base, ours, theirs)
        raise SaveConflict(MAX_SAVE_ATTEMPTS, log_id(current.id_hash))

    async def _update(
        self,
        loaded: Loaded,
        data: dict[str, Any],
        plaintext: bytes,
        now: int,
        client: Client | None,
    ) -> SaveOutcome:
        """Update the row; on a lost race, apply this request's changes (relative to what
        it loaded) onto the newer row, and retry."""
        current, current_user = loaded.record, loaded.user
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
                if user != current_user:
                    await self.lifecycle.user_changed(handle, user, current_user)
                return SaveOutcome(
                    SaveResult.KEPT, Loaded(loaded.sid, written, plaintext, user), merged
                )
            newer = await self._reload(current.id_hash, now)
            if newer is None:
                return SaveOutcome(SaveResult.NOT_STORED, None)
            current, theirs = newer
            current_user = user_of(theirs, self.user_key)
            if base is None:
                base = self.content_of(loaded)
            merged = merge_changes(base, data, theirs)
            if not merged:
                # Between them, the two requests removed every key: as a logout does.
                if await self.lifecycle.end(
                    current, "logout", user=current_user, only_this_version=True
                ):
                    self.codec.forget(loaded.record.payload)
                    return SaveOutcome(SaveResult.ENDED, None)
                continue  # yet another write landed: merge onto that one
            plaintext = self.codec.serialize(merged)
            logger.debug("session %s: merged a concurrent save", log_id(current.id_hash))
        raise SaveConflict(MAX_SAVE_ATTEMPTS, log_id(current.id_hash))

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
            sealed = self.owners.seal_client(id_hash, client)
            if len(self._sealed_clients) >= _SEALED_CLIENTS_KEPT:
                self._sealed_clients.pop(next(iter(self._sealed_clients)))
            self._sealed_clients[key] = sealed
        return sealed

    def _user_hash(self, user: str | None, loaded: Loaded | None = None) -> str | None:
        if user is None:
            return None
        if loaded is not None and loaded.user == user and loaded.record.user_hash:
            return loaded.record.user_hash  # the same user: no new HMAC
        return self.owners.user_hash(user)

    def _forget_replaced(self, *rows: StoredSession) -> None:
        for row in rows:
            self.codec.forget(row.payload)

    def content_of(self, loaded: Loaded) -> dict[str, Any]:
        """The content ``loaded`` held (empty for a row with none)."""
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


def _with_stamp(outcome: SaveOutcome, decision: SaveDecision) -> SaveOutcome:
    """The session takes on the data as stamped by the save (unless a merge gave it
    other content to take on already)."""
    if not decision.stamped or outcome.merged is not None or outcome.loaded is None:
        return outcome
    return replace(outcome, merged=decision.data)


def merge_changes(
    base: dict[str, Any],
    ours: dict[str, Any],
    theirs: dict[str, Any],
    same: Callable[[Any, Any], bool] | None = None,
) -> dict[str, Any]:
    """Apply what this request changed (relative to ``base``, what it loaded) onto
    ``theirs`` (the newer row), key by key at every depth of nested dicts.

    A key changed by only one side keeps that side's value. A key both changed keeps
    ours: this save is the later one. A deletion counts as a change, so a key one side
    deleted and the other changed follows the later save too. Where ours and theirs are
    both dicts, their keys are merged the same way (a dict both sides created counts as
    an empty one before); other values (lists, tuples, strings, ...) are replaced whole.

    "Changed" means what the save means by it: a value that serializes differently, so
    ``True`` replaced by ``1`` or a list by a tuple is a change (``same`` decides)."""
    unchanged = same or same_value
    merged = dict(theirs)
    for key in base.keys() | ours.keys():
        if key not in ours:  # we deleted it
            merged.pop(key, None)
            continue
        mine = ours[key]
        if key in base and unchanged(base[key], mine):
            continue  # not ours to change: theirs stands
        current = theirs.get(key)
        if type(mine) is dict and type(current) is dict:
            before = base.get(key)
            merged[key] = merge_changes(
                before if type(before) is dict else {}, mine, current, unchanged
            )
        else:
            merged[key] = mine
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
