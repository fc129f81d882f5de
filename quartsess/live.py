"""Websockets that enforce their session: a websocket opened with a session that then
ends (revoked, logged out in another tab, renewed by a login elsewhere, its user changed,
past a deadline) is closed with code 1008 and its handler cancelled, on every worker.

Each worker checks the sessions of all its open websockets with one statement per
``SESSION_WEBSOCKET_CHECK_INTERVAL`` (none while it has no websocket open), so it works
the same on every database and through a transaction pooler (no LISTEN/NOTIFY). An open
websocket is activity: its session's idle deadline is extended as a request's would be
(at most once per ``SESSION_TOUCH_INTERVAL``); the absolute timeout still ends it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import StoreError

if TYPE_CHECKING:
    from quart.wrappers import Websocket

    from .saving import SessionSaver
    from .session import ServerSession
    from .stores.base import StoredSession

logger = logging.getLogger("quartsess")

#: The close code of a websocket whose session ended: "policy violation" (RFC 6455).
CLOSE_CODE = 1008
CLOSE_REASON = "session ended"
#: Seconds a close may wait for a client that does not read before the handler is
#: cancelled anyway.
CLOSE_TIMEOUT = 1.0


@dataclass(eq=False, slots=True)
class _Watched:
    """An open websocket, the task running its handler, and its session."""

    websocket: Websocket
    task: asyncio.Task[object]
    session: ServerSession
    closing: bool = field(default=False)


class LiveWebsockets:
    """The open websockets of one worker, checked every ``interval`` seconds."""

    def __init__(self, saver: SessionSaver, interval: float | None) -> None:
        self.saver = saver
        self.interval = interval
        self._watched: set[_Watched] = set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._waiters: list[asyncio.Future[None]] = []
        self._user_hashes: dict[str, list[str]] = {}  # user -> hashes under every key
        self._closing: set[asyncio.Task[None]] = set()
        #: Checks finished so far (for tests and diagnostics).
        self.checks = 0

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, session: ServerSession, websocket: Websocket) -> None:
        """Enforce ``session`` on the websocket whose handler runs in the current task,
        until that task ends. A session that is not stored has nothing to enforce."""
        task = asyncio.current_task()
        if self.interval is None or session.loaded is None or task is None:
            return
        watched = _Watched(websocket, task, session)
        self._watched.add(watched)
        task.add_done_callback(lambda _: self._watched.discard(watched))
        if self._task is None or self._task.done():
            # A context of its own: not the first websocket's (whose request, session and
            # app context its signals' receivers would otherwise see, and keep alive).
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="quartsess-websockets", context=contextvars.Context()
            )

    async def next_check(self) -> None:
        """Wait until the next check of the open websockets has finished."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    async def stop(self) -> None:
        """Stop checking (the app is shutting down)."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=CLOSE_TIMEOUT * 2)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def _run(self) -> None:
        interval = self.interval or 1.0
        while self._watched:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:
                # A bug must not stop the checks for the life of the worker.
                logger.exception("unexpected error while checking open websockets' sessions")
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def check(self) -> int:
        """Check the session of every open websocket now, in one statement; close those
        whose session ended and keep the others alive. Returns how many were closed."""
        watched = [entry for entry in self._watched if not entry.closing]
        by_id: dict[str, list[_Watched]] = {}
        for entry in watched:
            loaded = entry.session.loaded
            if loaded is not None:
                by_id.setdefault(loaded.record.id_hash, []).append(entry)
        if not by_id:
            return 0
        saver = self.saver
        try:
            rows = {row.id_hash: row for row in await saver.store.load_many(list(by_id))}
        except StoreError as error:
            if not self._failing:
                logger.error(
                    "open websockets' sessions could not be checked; none is closed until "
                    "the session store answers: %s",
                    error,
                )
            self._failing = True
            return 0
        finally:
            self.checks += 1
        if self._failing:
            logger.info("open websockets' sessions are checked again")
            self._failing = False
        now = int(saver.clock())
        closed = 0
        for id_hash, entries in by_id.items():
            row = rows.get(id_hash)
            why = self._ended(row, entries, now)
            if why:
                for entry in entries:
                    entry.closing = True
                    closed += 1
                # In a task of its own: a client that stops reading (its close waits) or
                # a slow signal receiver must not hold up the checks of every other socket.
                ending = asyncio.ensure_future(self._end_and_close(row, entries, why))
                self._closing.add(ending)
                ending.add_done_callback(self._closing.discard)
            elif row is not None:
                await self._keep_alive(row, entries)
        return closed

    def _ended(self, row: StoredSession | None, entries: list[_Watched], now: int) -> str:
        """Why the sessions of ``entries`` ended (``""``: they did not)."""
        if row is None:
            return "its session ended"
        if not self.saver.policy.is_live(row, now):
            return "its session expired"
        loaded = entries[0].session.loaded
        if loaded is not None and self._user_changed(row, loaded.user):
            return "its session's user changed"
        return ""

    def _user_changed(self, row: StoredSession, user: str | None) -> bool:
        """Whether ``row`` is bound to another user than ``user``. Compared through the
        user's hash under every key, so a key rotation (which re-hashes the row's user)
        or a row that gains its hash on a write is not taken for a change of user."""
        if user is None:
            return row.user_hash is not None
        return row.user_hash is not None and row.user_hash not in self._hashes_of(user)

    def _hashes_of(self, user: str) -> list[str]:
        hashes = self._user_hashes.get(user)
        if hashes is None:
            if len(self._user_hashes) >= 4096:
                self._user_hashes.clear()
            hashes = self._user_hashes[user] = self.saver.owners.user_hashes(user)
        return hashes

    async def _keep_alive(self, row: StoredSession, entries: list[_Watched]) -> None:
        try:
            await self.saver.keep_alive(row, entries[0].session.client)
        except StoreError as error:
            logger.warning("an open websocket's session could not be kept alive: %s", error)

    async def _end_and_close(
        self, row: StoredSession | None, entries: list[_Watched], why: str
    ) -> None:
        if row is not None and why == "its session expired":
            # This worker found it expired: it ends the session (once, whoever finds it).
            try:
                full = await self.saver.store.load(row.id_hash)
                if full is not None:
                    await self.saver.lifecycle.end_expired(full)
            except StoreError as error:
                logger.warning("an expired session's row was left to the pruner: %s", error)
        for entry in entries:
            await self._close(entry, why)

    async def _close(self, entry: _Watched, why: str) -> None:
        logger.info("a websocket was closed: %s", why)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await entry.websocket.close(CLOSE_CODE, CLOSE_REASON)
        except Exception as error:
            # Closed already (by the handler, or the client went), or a client that does
            # not read: cancelling the handler is enough.
            logger.debug("closing a websocket failed: %r", error)
        entry.task.cancel()
