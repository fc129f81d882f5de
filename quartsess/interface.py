"""The Quart ``SessionInterface`` that opens and saves server-side sessions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from quart.sessions import SessionInterface, SessionMixin
from quart.wrappers import BaseRequestWebsocket, Response
from werkzeug.wrappers import Response as WerkzeugResponse

from .codec import PayloadCodec
from .config import SessionConfig
from .eager import start_eagerly
from .errors import InvalidPayload, SessionStoreUnavailable
from .ids import hash_session_id, is_well_formed, log_id, new_session_id
from .session import ServerSession, UnavailableSession
from .store import STORE_ERRORS, SessionStore, StoredSession

if TYPE_CHECKING:
    from quart import Quart
    from werkzeug.local import LocalProxy

logger = logging.getLogger("quartsess")

Clock = Callable[[], float]
# A save that keeps losing races gives up with a 503 instead of looping forever.
# Each failed attempt means another writer of the same session succeeded, so attempts
# are bounded by the number of concurrent writers; this bound only stops pathologies.
MAX_SAVE_ATTEMPTS = 64


class _SaveConflict(Exception):
    """Concurrent writers kept winning; the save gave up."""

    def __init__(self, id_hash: str) -> None:
        super().__init__(
            f"{MAX_SAVE_ATTEMPTS} concurrent updates of session {log_id(id_hash)} won in a row"
        )


# A save that fails for either reason answers 503 and keeps the stored session as it was.
_SAVE_FAILURES: tuple[type[BaseException], ...] = (*STORE_ERRORS, _SaveConflict)


# Values that cannot change without an assignment (which sets ``modified``).
_IMMUTABLE_SCALARS = frozenset({str, int, float, bool, type(None)})


class ServerSessionInterface(SessionInterface):
    """Sessions stored in SQL, keyed by the SHA-256 of a random cookie ID.

    Cookie settings come from Quart's ``get_cookie_*`` helpers on every response, so an
    app can subclass this and override any of them.
    """

    session_class = ServerSession

    def __init__(
        self, *, store: SessionStore, codec: PayloadCodec, config: SessionConfig, clock: Clock
    ) -> None:
        self.store = store
        self.codec = codec
        self.config = config
        self.clock = clock
        self._pending_saves: dict[str, asyncio.Future[None]] = {}
        self._saves: set[asyncio.Future[None]] = set()

    # -- helpers apps may override --------------------------------------------------

    def get_cookie_samesite(self, app: Quart) -> str:
        """SameSite as configured, or ``Lax`` where the app leaves it unset."""
        return app.config["SESSION_COOKIE_SAMESITE"] or "Lax"

    def get_expiration_time(self, app: Quart, session: SessionMixin) -> datetime | None:
        """Permanent sessions: the row's expiry. Others: ``None`` (a browser-session cookie)."""
        record = getattr(session, "_record", None)
        if not session.permanent or record is None:
            return None
        return datetime.fromtimestamp(record.expires_at, UTC)

    # -- open -----------------------------------------------------------------------

    async def open_session(self, app: Quart, request: BaseRequestWebsocket) -> ServerSession:
        """Load the session named by the request's cookie, or start an empty one.

        A cookie that is malformed, unknown, expired or does not decrypt is never
        adopted: the request gets a fresh session that will get a new ID if stored."""
        cookie = request.cookies.get(self.get_cookie_name(app))
        if not cookie:
            return self.session_class()
        if not is_well_formed(cookie):
            # Common and harmless (an old cookie format), so not a warning; never logged raw.
            logger.info("a malformed session cookie was ignored; a new session starts")
            return self.session_class()
        id_hash = hash_session_id(cookie)
        pending = self._pending_saves.get(id_hash)
        if pending is not None:
            await asyncio.wait([pending])
        try:
            await self.store.prepare(create_table=self.config.create_table)
            record = await self.store.load(id_hash)
        except STORE_ERRORS as error:
            logger.error(
                "session store unavailable while loading session %s: %s",
                log_id(id_hash),
                _describe(error),
            )
            return UnavailableSession()
        now = int(self.clock())
        if record is None or not self._is_live(record, now):
            logger.info("session %s is unknown or expired; a new session starts", log_id(id_hash))
            return self.session_class()
        try:
            data, snapshot = self.codec.open(id_hash, record.payload)
        except InvalidPayload as error:
            logger.warning(
                "security: session %s was rejected and replaced by a new one: %s",
                log_id(id_hash),
                error,
            )
            return self.session_class()
        return self.session_class(data, sid=cookie, record=record, snapshot=snapshot)

    def _is_live(self, record: StoredSession, now: int) -> bool:
        # The stored deadline, and the current settings (which may have been shortened).
        if now >= record.expires_at or now >= record.touched_at + self.config.idle_timeout:
            return False
        absolute = self.config.absolute_timeout
        return absolute is None or now < record.created_at + absolute

    def _deadline(self, now: int, created_at: int) -> int:
        deadline = now + self.config.idle_timeout
        if self.config.absolute_timeout is not None:
            deadline = min(deadline, created_at + self.config.absolute_timeout)
        return deadline

    # -- save -----------------------------------------------------------------------

    async def save_session(
        self,
        app: Quart,
        session: SessionMixin,
        response: Response | WerkzeugResponse | None,
    ) -> None:
        """Store what changed (one statement), extend the idle deadline at most once per
        ``SESSION_TOUCH_INTERVAL``, and set or delete the cookie.

        ``response`` is ``None`` after a websocket: changes to an existing session are
        still stored, but no cookie can be sent."""
        if not isinstance(session, ServerSession) or isinstance(session, UnavailableSession):
            return
        if response is not None and session._read:
            _vary_on_cookie(response)
        plaintext = self._plaintext_to_save(session)
        if plaintext is False:
            return  # the common read-only request: no statement, so no task either
        # A client that disconnects cancels the request task (always so for websockets,
        # whose save runs after the handler); the write must finish regardless, and the
        # next request of the same session in this process waits for it. A write that
        # never waits (SQLite's inline path) is done before anything could cancel it.
        # Only there: an asyncio.timeout entered during an eager start binds to the
        # request's task, so the drivers' connect and pool time-outs would cancel the
        # request instead of the write.
        record = session._record
        writing = self._save_or_report(app, session, response, plaintext)
        if self.store.writes_inline:
            save = start_eagerly(writing)
            if save is None:
                return
        else:
            save = asyncio.ensure_future(writing)
        self._saves.add(save)
        save.add_done_callback(self._saves.discard)
        if record is not None:
            id_hash = record.id_hash
            self._pending_saves[id_hash] = save
            save.add_done_callback(lambda _: self._forget_pending(id_hash, save))
        await asyncio.shield(save)

    def _plaintext_to_save(self, session: ServerSession) -> bytes | Literal[False] | None:
        """False when :meth:`_save` would not write anything (decided here, without a
        task); otherwise the serialized content, or None when not computed here."""
        record = session._record
        if record is None:
            return False if not dict.__len__(session) else None
        if (
            session._regenerate_requested
            or not dict.__len__(session)
            or int(self.clock()) - record.touched_at >= self.config.touch_interval
        ):
            return None
        if not session.modified and all(
            type(value) in _IMMUTABLE_SCALARS for value in dict.values(session)
        ):
            # Nothing was assigned or deleted, and no value can change in place.
            return False
        plaintext = self.codec.serialize(session._contents())
        return False if plaintext == session._snapshot else plaintext

    async def wait_for_saves(self) -> None:
        """Wait until every save in flight has finished (called before shutting down)."""
        while self._saves:
            await asyncio.wait(set(self._saves))

    async def persist(self, session: ServerSession) -> None:
        """Store an existing session's changes now (see :meth:`ServerSession.save`).

        Raises :class:`SessionStoreUnavailable` when the store cannot be written."""
        if isinstance(session, UnavailableSession):
            raise SessionStoreUnavailable()
        if session._record is None:
            raise RuntimeError(
                "only a stored session can be saved early; a new one is stored with the "
                "response that sends its cookie"
            )
        from quart import current_app

        # Typed as a Quart (0.22) or a proxy of one (0.23): cast to what it is.
        app = cast("LocalProxy[Quart]", current_app)._get_current_object()
        try:
            await self._save(app, session, None)
        except _SAVE_FAILURES as error:
            _log_save_failure(error)
            raise SessionStoreUnavailable() from error

    def _forget_pending(self, id_hash: str, save: asyncio.Future[None]) -> None:
        if self._pending_saves.get(id_hash) is save:
            del self._pending_saves[id_hash]

    async def _save_or_report(
        self,
        app: Quart,
        session: ServerSession,
        response: Response | WerkzeugResponse | None,
        plaintext: bytes | None = None,
    ) -> None:
        try:
            await self._save(app, session, response, plaintext)
        except _SAVE_FAILURES as error:
            _log_save_failure(error)
            if response is not None:
                _replace_with_unavailable(response)

    async def _save(
        self,
        app: Quart,
        session: ServerSession,
        response: Response | WerkzeugResponse | None,
        plaintext: bytes | None = None,
    ) -> None:
        data = session._contents()
        record = session._record
        now = int(self.clock())
        if not data:
            if record is not None:
                await self.store.delete(record.id_hash)
                session._forget_row()
                if response is not None:
                    self._delete_cookie(app, response)
            return
        if plaintext is None:
            plaintext = self.codec.serialize(data)
        if response is None and (record is None or session._regenerate_requested):
            if record is None:
                logger.warning(
                    "a new session was changed in a websocket handler; it is not stored "
                    "because no cookie can be sent over a websocket"
                )
                return
            logger.warning(
                "session.regenerate() is ignored in a websocket handler (no cookie can be "
                "sent); the changes are stored under the current ID"
            )
            session._regenerate_requested = False
        if record is None or session._regenerate_requested:
            await self._store_new(app, session, response, record, plaintext, now)
            return

        changed = plaintext != session._snapshot
        due_touch = now - record.touched_at >= self.config.touch_interval
        if not changed and not due_touch:
            return
        if changed:
            stored = await self._write_changes(session, record, data, plaintext, now)
        else:
            expires = self._deadline(now, record.created_at)
            stored = await self.store.touch(record.id_hash, touched_at=now, expires_at=expires)
            if stored:
                session._record = replace(record, touched_at=now, expires_at=expires)
        if not stored:
            # Logged out, regenerated by a login, or expired and pruned while this request
            # ran: never resurrect it, and leave the cookie alone (a login running at the
            # same time may just have set a new one; a logout deleted it itself).
            session._forget_row()
            return
        if response is not None:
            permanent = session.permanent
            refresh = permanent and app.config["SESSION_REFRESH_EACH_REQUEST"]
            if permanent != session._loaded_permanent or refresh:
                self._set_cookie(app, session, response)

    async def _store_new(
        self,
        app: Quart,
        session: ServerSession,
        response: Response | WerkzeugResponse | None,
        previous: StoredSession | None,
        plaintext: bytes,
        now: int,
    ) -> None:
        # The first write of a fresh deployment may come before any request with a cookie.
        await self.store.prepare(create_table=self.config.create_table)
        sid = new_session_id()
        id_hash = hash_session_id(sid)
        created_at = now
        if previous is not None:
            self.codec.check_size(plaintext)  # before the old row goes
            retired = await self._retire(session, previous, now)
            if retired is None:
                # Logged out (or gone) while this request ran: a regenerate must not
                # bring it back under a new ID.
                session._forget_row()
                return
            plaintext = self.codec.serialize(session._contents())
            # A new ID does not restart the absolute timeout.
            created_at = retired.created_at
        record = StoredSession(
            id_hash=id_hash,
            payload=self.codec.seal(id_hash, plaintext),
            version=1,
            created_at=created_at,
            touched_at=now,
            expires_at=self._deadline(now, created_at),
        )
        await self.store.insert(record)
        session._sid = sid
        session._record = record
        session._snapshot = plaintext
        session._regenerate_requested = False
        session.new = False
        if response is not None:
            self._set_cookie(app, session, response)

    async def _retire(
        self, session: ServerSession, previous: StoredSession, now: int
    ) -> StoredSession | None:
        """Delete the row being regenerated if nobody changed it meanwhile; otherwise merge
        its newer content into ``session`` first. ``None`` if it is gone.

        The old ID goes first: if we stop half-way the user is logged out, never left
        with a second live ID for the same data."""
        base = self._snapshot_of(session)
        ours = session._contents()
        current = previous
        for _ in range(MAX_SAVE_ATTEMPTS):
            if await self.store.delete_version(current.id_hash, current.version):
                return current
            newer = await self._reload(current.id_hash, now)
            if newer is None:
                return None
            current, theirs = newer
            session._replace_contents(merge_changes(base, ours, theirs))
        raise _SaveConflict(current.id_hash)

    def _snapshot_of(self, session: ServerSession) -> dict[str, Any]:
        return self.codec.deserialize(session._snapshot) if session._snapshot else {}

    async def _reload(self, id_hash: str, now: int) -> tuple[StoredSession, dict[str, Any]] | None:
        """The row as it is now and its content, or ``None`` if gone, expired or unreadable."""
        newer = await self.store.load(id_hash)
        if newer is None or not self._is_live(newer, now):
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

    async def _write_changes(
        self,
        session: ServerSession,
        record: StoredSession,
        data: dict[str, Any],
        plaintext: bytes,
        now: int,
    ) -> bool:
        """Update the row; on a lost race, apply this request's changes (relative to what
        it loaded) onto the newer row, and retry. False if the row is gone."""
        current = record
        base: dict[str, Any] | None = None
        for _ in range(MAX_SAVE_ATTEMPTS):
            payload = self.codec.seal(current.id_hash, plaintext)
            expires = self._deadline(now, current.created_at)
            if await self.store.update(
                current.id_hash,
                expected_version=current.version,
                payload=payload,
                touched_at=now,
                expires_at=expires,
            ):
                session._record = replace(
                    current,
                    payload=payload,
                    version=current.version + 1,
                    touched_at=now,
                    expires_at=expires,
                )
                session._snapshot = plaintext
                return True
            newer = await self._reload(current.id_hash, now)
            if newer is None:
                return False
            current, theirs = newer
            if base is None:
                base = self._snapshot_of(session)
            merged = merge_changes(base, data, theirs)
            if not merged:
                if await self.store.delete_version(current.id_hash, current.version):
                    return False
                continue  # yet another write landed: merge onto that one
            session._replace_contents(merged)
            plaintext = self.codec.serialize(merged)
            logger.debug("session %s: merged a concurrent save", log_id(current.id_hash))
        raise _SaveConflict(current.id_hash)

    # -- cookies --------------------------------------------------------------------

    def _set_cookie(
        self, app: Quart, session: ServerSession, response: Response | WerkzeugResponse
    ) -> None:
        if session.sid is None:  # pragma: no cover - only called after a store
            return
        response.set_cookie(
            self.get_cookie_name(app),
            session.sid,
            expires=self.get_expiration_time(app, session),
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            partitioned=self.get_cookie_partitioned(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
        )
        _forbid_shared_caching(response)

    def _delete_cookie(self, app: Quart, response: Response | WerkzeugResponse) -> None:
        response.delete_cookie(
            self.get_cookie_name(app),
            domain=self.get_cookie_domain(app),
            partitioned=self.get_cookie_partitioned(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            httponly=self.get_cookie_httponly(app),
        )
        response.vary.add("Cookie")
        _forbid_shared_caching(response)


def merge_changes(
    base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]
) -> dict[str, Any]:
    """Apply the keys this request changed (relative to ``base``) onto ``theirs``:
    keys changed by only one side survive from that side; a key both changed takes ours."""
    merged = dict(theirs)
    for key in base.keys() | ours.keys():
        if key in ours:
            if key not in base or base[key] != ours[key]:
                merged[key] = ours[key]
        elif key in merged:
            del merged[key]
    return merged


def _vary_on_cookie(response: Response | WerkzeugResponse) -> None:
    if response.headers.getlist("Vary"):
        response.vary.add("Cookie")
    else:
        # Same header as ``vary.add``, without parsing a header that is not there.
        response.headers.add("Vary", "Cookie")


def _forbid_shared_caching(response: Response | WerkzeugResponse) -> None:
    # A response that sets a session cookie must never be served to someone else.
    response.cache_control.public = False
    response.cache_control.private = True


def _replace_with_unavailable(response: Response | WerkzeugResponse) -> None:
    error = SessionStoreUnavailable()
    response.status_code = error.code or 503
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    response.headers["Retry-After"] = "5"
    response.set_data(error.description or "")


def _log_save_failure(error: BaseException) -> None:
    if isinstance(error, _SaveConflict):
        logger.error("session save abandoned: %s", error)
    else:
        logger.error("session store unavailable while saving: %s", _describe(error))


def _describe(error: BaseException) -> str:
    # SQLAlchemy's messages carry no parameters (hide_parameters=True on the engine).
    return f"{type(error).__name__}: {error}".splitlines()[0]
