"""The Quart side of quartsess: open and save sessions, cookies, and saves in flight."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from quart.sessions import SessionInterface, SessionMixin
from quart.wrappers import BaseRequestWebsocket, Response, Websocket
from werkzeug.wrappers import Response as WerkzeugResponse

from .eager import start_eagerly
from .errors import (
    RETRY_AFTER_SECONDS,
    SaveConflict,
    SessionNotSerializable,
    SessionStoreUnavailable,
    SessionTooLarge,
    StoreError,
    TableMissing,
)
from .holds import Hold, SessionHolds
from .ids import hash_session_id, is_well_formed, log_id
from .live import LiveWebsockets
from .owners import Client
from .saving import (
    SAVE_FAILURES,
    SaveDecision,
    SaveOutcome,
    SaveResult,
    SessionSaver,
    merge_changes,
)
from .session import ServerSession, UnavailableSession

if TYPE_CHECKING:
    from quart import Quart

    from .config import SessionConfig

logger = logging.getLogger("quartsess")

AnyResponse = Response | WerkzeugResponse
# The session's content cannot be stored: the view's fault, a 500 like any other bug.
_CONTENT_ERRORS = (SessionNotSerializable, SessionTooLarge)
CookieAction = Literal["set", "delete", "keep"]


class ServerSessionInterface(SessionInterface):
    """Sessions stored server-side, keyed by the SHA-256 of a random cookie ID.

    Cookie settings come from Quart's ``get_cookie_*`` helpers on every response, so an
    app can subclass this and override any of them.
    """

    session_class = ServerSession
    #: The session of a request whose row could not be read: any use answers 503.
    #: (Quart types this attribute as its own ``NullSession`` class.)
    null_session_class = UnavailableSession  # type: ignore[assignment]

    def __init__(
        self,
        saver: SessionSaver,
        config: SessionConfig,
        live: LiveWebsockets | None = None,
        holds: SessionHolds | None = None,
    ) -> None:
        self.saver = saver
        self.config = config
        #: The worker's open websockets, closed when their session ends elsewhere.
        self.live = live if live is not None else LiveWebsockets(saver, None)
        # What a response that read the session varies on.
        self._vary_names: tuple[str, ...] = (
            ("Cookie",) if config.header_name is None else ("Cookie", config.header_name)
        )
        #: The holds of ``@exclusive`` routes.
        self.holds = holds if holds is not None else SessionHolds(saver, config.exclusive_timeout)
        self.policy = saver.policy
        self.clock = saver.clock
        # Saves in flight, by ID hash: the next request of that session waits for its save.
        self._pending_saves: dict[str, asyncio.Future[None]] = {}
        self._saves: set[asyncio.Future[None]] = set()

    # -- helpers apps may override --------------------------------------------------

    def get_cookie_samesite(self, app: Quart) -> str:
        """SameSite as configured, or ``Lax`` where the app leaves it unset."""
        return app.config["SESSION_COOKIE_SAMESITE"] or "Lax"

    def get_expiration_time(self, app: Quart, session: SessionMixin) -> datetime | None:
        """Permanent sessions: the idle deadline from now, capped by the absolute one (the
        row's own deadline follows within ``SESSION_TOUCH_INTERVAL``). Others: ``None``
        (a browser-session cookie)."""
        loaded = session.loaded if isinstance(session, ServerSession) else None
        if not session.permanent or loaded is None:
            return None
        deadline = self.policy.deadline(
            int(self.clock()), loaded.record.created_at, bound=loaded.user is not None
        )
        return datetime.fromtimestamp(deadline, UTC)

    # -- open -----------------------------------------------------------------------

    async def open_session(self, app: Quart, request: BaseRequestWebsocket) -> SessionMixin:
        """Load the session named by the request's cookie, or start an empty one.

        A cookie that is malformed, unknown, expired or does not decrypt is never
        adopted: the request gets a fresh session that will get a new ID if stored.
        When the store cannot be read, the null session (any use answers 503)."""
        client = self.client_of(request)
        header = self.config.header_name
        via_header = header is not None and header in request.headers
        cookie: str | None
        if via_header:
            cookie = request.headers.get(header or "", "").strip()
        else:
            cookie = request.cookies.get(self.get_cookie_name(app))

        def fresh() -> ServerSession:
            return self.session_class(
                persist=self.persist, client=client, clock=self.clock, via_header=via_header
            )

        if not cookie:
            return fresh()
        if not is_well_formed(cookie):
            # Common and harmless (an old cookie format), so not a warning; never logged raw.
            where = "header" if via_header else "cookie"
            logger.info("a malformed session %s was ignored; a new session starts", where)
            return fresh()
        id_hash = hash_session_id(cookie)
        pending = self._pending_saves.get(id_hash)
        if pending is not None:
            await asyncio.wait([pending])
        try:
            opened = await self.saver.load(cookie, id_hash)
        except StoreError as error:
            what = "cannot be loaded" if isinstance(error, TableMissing) else "was not loaded"
            level = logging.DEBUG if error.logged else logging.ERROR
            logger.log(level, "session %s %s: %s", log_id(id_hash), what, _failure(error))
            return await self.make_null_session(app)
        if opened is None:
            return fresh()
        loaded, data = opened
        session = self.session_class(
            data,
            loaded=loaded,
            persist=self.persist,
            client=client,
            clock=self.clock,
            via_header=via_header,
        )
        if isinstance(request, Websocket):
            self.live.watch(session, request)
        return session

    def client_of(self, request: BaseRequestWebsocket) -> Client | None:
        """What a session records of its client: the User-Agent and
        ``request.remote_addr`` (so the app's proxy middleware applies), or ``None``
        when ``SESSION_RECORD_CLIENT`` is off (the next write then clears what was
        recorded). Override to record something else."""
        if not self.config.record_client:
            return None
        return Client(request.headers.get("User-Agent"), request.remote_addr)

    # -- save -----------------------------------------------------------------------

    async def save_session(
        self, app: Quart, session: SessionMixin, response: AnyResponse | None
    ) -> None:
        """Store what changed (one statement), extend the idle deadline at most once per
        ``SESSION_TOUCH_INTERVAL``, and set or delete the cookie.

        ``response`` is ``None`` after a websocket: changes to an existing session are
        still stored, but no cookie can be sent."""
        if not isinstance(session, ServerSession) or self.is_null_session(session):
            return
        hold = session.take_hold()
        save: asyncio.Future[None] | None = None
        try:
            if hold is not None:
                await self.holds.confirm(hold)  # a long request: is the lease still ours?
            save = self._start_save(app, session, response, hold)
        finally:
            released = None if hold is None else self._release_after(hold, save)
        if save is not None:
            await asyncio.shield(save)
        if released is not None:
            await asyncio.shield(released)

    def _start_save(
        self,
        app: Quart,
        session: ServerSession,
        response: AnyResponse | None,
        hold: Hold | None = None,
    ) -> asyncio.Future[None] | None:
        """Decide the save and start its write; the write's task, or ``None`` when
        nothing was left to wait for."""
        if session.unstorable or session.ended_meanwhile:
            # unstorable: the error response of a failed save is saved too (Quart
            # finalizes it), and the error was raised and logged once already.
            # ended_meanwhile: the session ended while an @exclusive request waited for
            # it; like any request that loses that race, it stores nothing and leaves the
            # cookie alone (a login that ended it may just have set a new one).
            return None
        if response is not None and session.read_by_app:
            self._vary(response)
        if hold is not None and hold.lost:
            # Another request may have held the session since: writing now could undo
            # its change. A 503 tells the client to try again.
            logger.error("an @exclusive request lost its hold on the session; not saved")
            if response is not None:
                _replace_with_unavailable(response)
            return None
        try:
            decision = self.saver.decide(
                session.loaded,
                session.contents(),
                modified=session.modified,
                regenerate=session.regenerate_requested,
                can_send_cookie=response is not None,
                client=session.client,
            )
        except _CONTENT_ERRORS:
            session.mark_unstorable()
            raise
        if not decision.writes:
            # The common read-only request: no statement, so no task either.
            if response is not None:
                self._send_cookie(app, session, response, decision.result)
            return None
        # A client that disconnects cancels the request task (always so for websockets,
        # whose save runs after the handler); the write must finish regardless, and the
        # next request of the same session in this process waits for it. A write that
        # never waits (SQLite's inline path) is done before anything could cancel it.
        # Only there: an asyncio.timeout entered during an eager start binds to the
        # request's task, so the drivers' connect and pool time-outs would cancel the
        # request instead of the write.
        loaded = session.loaded
        writing = self._save_and_send(app, session, response, decision)
        if self.saver.store.writes_inline:
            save = start_eagerly(writing)
            if save is None:
                return None
        else:
            save = asyncio.ensure_future(writing)
        self._track(save)
        if loaded is not None:
            id_hash = loaded.record.id_hash
            self._pending_saves[id_hash] = save
            save.add_done_callback(lambda _: self._forget_pending(id_hash, save))
        return save

    # -- @exclusive -------------------------------------------------------------------

    async def hold(self, session: SessionMixin) -> None:
        """Hold ``session`` for the rest of the request (``@exclusive``): wait until no
        other request of it holds it, on any worker, and bring the session up to date
        with what the last holder saved. Released once this request's save is done.

        A session that is not stored has nothing to wait for. Raises
        :class:`~quartsess.SessionBusy` after ``SESSION_EXCLUSIVE_TIMEOUT`` seconds."""
        if not isinstance(session, ServerSession) or session.loaded is None:
            return
        if session.hold is not None:
            return  # held already (a view decorated twice)
        loaded = session.loaded
        try:
            hold, fresh = await self.holds.take(loaded)
        except StoreError as error:
            logger.error("session not held for an @exclusive route: %s", _failure(error))
            raise
        if fresh is not None and fresh is not False:
            # Changed meanwhile: what this request changed before the hold (a
            # before_request hook, say) is merged onto the newer content, not lost.
            newer, theirs = fresh
            base = self.saver.content_of(loaded)
            fresh = (newer, merge_changes(base, session.contents(), theirs))
        session.held(hold, fresh)
        task = asyncio.current_task()
        if hold is not None and task is not None:
            # Should the request never reach its save (its client went), the hold is
            # released when its task ends, not when the lease runs out.
            task.add_done_callback(lambda _: self._release_unsaved(session))

    def _release_unsaved(self, session: ServerSession) -> None:
        hold = session.take_hold()
        if hold is not None:
            self._release_after(hold, None)

    def _release_after(self, hold: Hold, save: asyncio.Future[None] | None) -> asyncio.Future[None]:
        async def release() -> None:
            if save is not None:
                await asyncio.wait([save])
            await self.holds.release(hold)

        released = asyncio.ensure_future(release())
        self._track(released)
        return released

    def _track(self, future: asyncio.Future[None]) -> None:
        self._saves.add(future)
        future.add_done_callback(self._saves.discard)

    async def _save_and_send(
        self,
        app: Quart,
        session: ServerSession,
        response: AnyResponse | None,
        decision: SaveDecision,
    ) -> None:
        permanence_changed = session.permanence_changed  # before the save resets it
        try:
            outcome = await self._carry_out(session, decision)
        except SAVE_FAILURES:
            if response is not None:
                _replace_with_unavailable(response)
            return
        if response is not None:
            self._send_cookie(app, session, response, outcome.result, permanence_changed)

    async def _carry_out(self, session: ServerSession, decision: SaveDecision) -> SaveOutcome:
        """Carry ``decision`` out and make ``session`` take on what it did. A failure of
        the store is logged here and raised (one of ``SAVE_FAILURES``)."""
        try:
            outcome = await self.saver.carry_out(decision)
        except SAVE_FAILURES as error:
            _log_save_failure(error)
            raise
        except _CONTENT_ERRORS:
            session.mark_unstorable()
            raise
        session.apply_save(outcome)
        return outcome

    def _send_cookie(
        self,
        app: Quart,
        session: ServerSession,
        response: AnyResponse,
        result: SaveResult,
        permanence_changed: bool = False,
    ) -> None:
        """Set, delete or leave the cookie after a save that had ``result`` (or, for a
        session that came in the header, the header)."""
        if session.via_header:
            self._send_header(session, response, result)
            return
        action = self._cookie_action(app, session, result, permanence_changed)
        if action == "set":
            self._set_cookie(app, session, response)
        elif action == "delete":
            self._delete_cookie(app, response)

    def _cookie_action(
        self,
        app: Quart,
        session: ServerSession,
        result: SaveResult,
        permanence_changed: bool = False,
    ) -> CookieAction:
        if result is SaveResult.ENDED:
            return "delete"
        if result is SaveResult.NOT_STORED or session.loaded is None:
            # Logged out, renewed by a login, or expired while this request ran: leave
            # the cookie alone (a login running at the same time may just have set a new
            # one; a logout deleted it itself).
            return "keep"
        if type(self).should_set_cookie is not SessionInterface.should_set_cookie:
            return "set" if self.should_set_cookie(app, session) else "keep"
        # Quart's rule (should_set_cookie): after a change, and on every response of a
        # permanent session while SESSION_REFRESH_EACH_REQUEST is on (a sliding expiry);
        # but a browser-session cookie whose ID did not change is not sent again: it
        # would carry nothing new, and costs a Set-Cookie on every write.
        if result is SaveResult.ISSUED or permanence_changed:
            return "set"
        if session.permanent and (session.modified or app.config["SESSION_REFRESH_EACH_REQUEST"]):
            return "set"
        return "keep"

    async def persist(self, session: ServerSession) -> None:
        """Store an existing session's changes now (see :meth:`ServerSession.save`).

        Raises :class:`SessionStoreUnavailable` when the store cannot be written."""
        if self.is_null_session(session):
            raise SessionStoreUnavailable()
        if session.loaded is None:
            raise RuntimeError(
                "only a stored session can be saved early; a new one is stored with the "
                "response that sends its cookie"
            )
        decision = self.saver.decide(
            session.loaded,
            session.contents(),
            regenerate=session.regenerate_requested,
            can_send_cookie=False,
            client=session.client,
        )
        if not decision.writes:
            return
        try:
            await self._carry_out(session, decision)
        except SAVE_FAILURES as error:
            raise SessionStoreUnavailable() from error

    async def wait_for_saves(self) -> None:
        """Wait until every save in flight has finished (called before shutting down)."""
        while self._saves:
            await asyncio.wait(set(self._saves))

    def _forget_pending(self, id_hash: str, save: asyncio.Future[None]) -> None:
        if self._pending_saves.get(id_hash) is save:
            del self._pending_saves[id_hash]

    # -- cookies --------------------------------------------------------------------

    def _send_header(
        self, session: ServerSession, response: AnyResponse, result: SaveResult
    ) -> None:
        """A session that came in the header answers in it: the ID when it is new (a new
        session, or renewed), an empty value when it ended; nothing otherwise."""
        header = self.config.header_name
        if header is None:  # pragma: no cover - only header sessions come here
            return
        if result is SaveResult.ENDED:
            response.headers[header] = ""
        elif result is SaveResult.ISSUED and session.sid is not None:
            response.headers[header] = session.sid
        else:
            return
        self._vary(response)
        _forbid_shared_caching(response)

    def _vary(self, response: AnyResponse) -> None:
        _vary_on(response, self._vary_names)

    def _set_cookie(self, app: Quart, session: ServerSession, response: AnyResponse) -> None:
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
        self._vary(response)
        _forbid_shared_caching(response)

    def _delete_cookie(self, app: Quart, response: AnyResponse) -> None:
        response.delete_cookie(
            self.get_cookie_name(app),
            domain=self.get_cookie_domain(app),
            partitioned=self.get_cookie_partitioned(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            httponly=self.get_cookie_httponly(app),
        )
        self._vary(response)
        _forbid_shared_caching(response)


def _vary_on(response: AnyResponse, names: tuple[str, ...]) -> None:
    """Name ``names`` (``Cookie``, and the session header when there is one) in ``Vary``
    as Quart and Flask do: on the app's own ``Vary`` line, one line in all (caches and
    proxies exist that read only the first)."""
    lines = response.headers.getlist("Vary")
    if not lines:
        # The common case: nothing to merge with, no parsing.
        response.headers["Vary"] = ", ".join(names)
        return
    fields = [field.strip() for line in lines for field in line.split(",") if field.strip()]
    named = {field.lower() for field in fields}
    if "*" in named:
        return  # everything varies: the app's lines stay as they are
    missing = [name for name in names if name.lower() not in named]
    if missing:
        response.headers["Vary"] = ", ".join([*fields, *missing])


def _forbid_shared_caching(response: AnyResponse) -> None:
    # A response that sets a session cookie must never be served to someone else.
    lines = response.headers.getlist("Cache-Control")
    if not lines:
        # What the assignments below write when there is no header, without building
        # the parsed header object and serializing it twice.
        response.headers["Cache-Control"] = "private"
        return
    if len(lines) > 1:  # werkzeug parses only the first line: keep the others' directives
        response.headers["Cache-Control"] = ", ".join(lines)
    response.cache_control.public = False
    response.cache_control.private = True


def _replace_with_unavailable(response: AnyResponse) -> None:
    error = SessionStoreUnavailable()
    response.status_code = error.code or 503
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response.set_data(error.description or "")


def _log_save_failure(error: BaseException) -> None:
    if isinstance(error, SaveConflict):
        logger.error("session save abandoned: %s", error)
    elif isinstance(error, StoreError) and error.logged:
        logger.debug("session not saved: %s", _failure(error))
    else:
        logger.error("session not saved: %s", _failure(error))


def _failure(error: BaseException) -> str:
    # A missing table says so itself; anything else is the store being unavailable.
    return str(error) if isinstance(error, TableMissing) else f"session store unavailable: {error}"
