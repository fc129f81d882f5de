"""The lifecycle of sessions: the one place where a session ends, and where every
transition (created, user changed, ended, pruned) is reported once, by the process that
made it, after it was committed. Knows the store contract and the codec; no Quart."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import InvalidPayload
from .owners import user_of

if TYPE_CHECKING:
    from .codec import PayloadCodec
    from .stores.base import MaintainedStore, StoredSession

logger = logging.getLogger("quartsess")

EndReason = Literal["logout", "revoked", "capped", "expired"]


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """A new session was stored (``user``: the user it was stored for, if any)."""

    handle: str
    user: str | None


@dataclass(frozen=True, slots=True)
class SessionUserChanged:
    """A stored session became a user's, changed user, or stopped being one."""

    handle: str
    user: str | None
    previous_user: str | None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session's row was deleted: ``"logout"`` (``session.clear()``), ``"revoked"``,
    ``"capped"`` (``SESSION_MAX_PER_USER``) or ``"expired"`` (found past its deadline)."""

    handle: str
    user: str | None
    reason: EndReason


@dataclass(frozen=True, slots=True)
class SessionsPruned:
    """One batch of the pruner deleted ``count`` expired rows that no request had found."""

    count: int


Transition = SessionCreated | SessionUserChanged | SessionEnded | SessionsPruned
Listener = Callable[[Transition], Awaitable[None]]


class Lifecycle:
    """Ends sessions in ``store`` and reports every transition to ``listeners``.

    A listener that raises is logged with its traceback and fails nothing else. Rows
    written before handles existed (revision 0002) are ended without a report."""

    def __init__(self, store: MaintainedStore, codec: PayloadCodec, user_key: str | None) -> None:
        self.store = store
        self.codec = codec
        self.user_key = user_key
        self.listeners: list[Listener] = []

    # -- beginnings and changes, which the save protocol writes -----------------------

    async def created(self, handle: str, user: str | None) -> None:
        await self._report(SessionCreated(handle, user))

    async def user_changed(self, handle: str, user: str | None, previous_user: str | None) -> None:
        if user != previous_user:
            await self._report(SessionUserChanged(handle, user, previous_user))

    # -- ends ----------------------------------------------------------------------------

    async def end(
        self,
        row: StoredSession,
        reason: EndReason,
        *,
        user: str | None,
        only_this_version: bool = False,
    ) -> bool:
        """Delete ``row`` (with ``only_this_version``: unless it changed since it was
        read) and report the end; False if it was gone (or changed) already."""
        if only_this_version:
            ended = await self.store.delete_version(row.id_hash, row.version)
        else:
            ended = await self.store.delete(row.id_hash)
        self.codec.forget(row.payload)
        if ended:
            await self._report_end(row, user, reason)
        return ended

    async def end_expired(self, row: StoredSession) -> bool:
        """End a row found past its deadline (unless a request rewrote it meanwhile)."""
        return await self.end(row, "expired", user=self.user_in(row), only_this_version=True)

    async def end_handles(
        self,
        handles: Sequence[str],
        reason: EndReason,
        *,
        user: str | None = None,
        user_hashes: Sequence[str] | None = None,
    ) -> int:
        """End the sessions named by ``handles`` (only those of ``user_hashes``, when
        given), each reported with ``user`` or, when not given, the user its payload
        names; returns how many ended."""
        rows = await self.store.delete_handles(handles, user_hashes=user_hashes)
        await self._ended(rows, reason, user)
        return len(rows)

    async def end_user_sessions(
        self, user: str, user_hashes: Sequence[str], *, except_handle: str | None = None
    ) -> int:
        """End every session of ``user`` but the one named ``except_handle``."""
        rows = await self.store.delete_user(user_hashes, except_handle=except_handle)
        await self._ended(rows, "revoked", user)
        return len(rows)

    async def prune(self, now: int, limit: int) -> int:
        """Delete at most ``limit`` rows expired at ``now``: one batch of the pruner,
        reported as one :class:`SessionsPruned` (a row's user is in its payload, and
        decrypting a million expired rows to name them is not worth it)."""
        count = await self.store.delete_expired(now, limit)
        if count:
            await self._report(SessionsPruned(count))
        return count

    def user_in(self, row: StoredSession) -> str | None:
        """The user a row's payload names (``None`` if it names none or does not open)."""
        if self.user_key is None or not row.user_hash:
            return None
        try:
            data, _ = self.codec.open(row.id_hash, row.payload)
        except InvalidPayload:
            return None
        return user_of(data, self.user_key)

    async def _ended(
        self, rows: Sequence[StoredSession], reason: EndReason, user: str | None
    ) -> None:
        for row in rows:
            self.codec.forget(row.payload)
            await self._report_end(row, user if user is not None else self.user_in(row), reason)

    async def _report_end(self, row: StoredSession, user: str | None, reason: EndReason) -> None:
        if row.handle is not None:
            await self._report(SessionEnded(row.handle, user, reason))

    async def _report(self, transition: Transition) -> None:
        for listener in self.listeners:
            try:
                await listener(transition)
            except Exception:
                logger.exception(
                    "a session lifecycle listener failed on %s", type(transition).__name__
                )
