"""Holds: one request of a session at a time, for the routes marked ``@exclusive``.

A hold is a lease on the session's row (``lease_owner``, ``lease_until``), taken by one
statement that succeeds only while nobody holds it and only on the version the request
loaded, so the holder works on the current content; it is released by one statement
after the request's save. Every worker and machine sharing the database sees it, through
any pooler (no lock is held across statements). A worker that dies holding one loses it
when the lease runs out, ``LEASE_SECONDS`` after it was last renewed; a holder renews it
every ``LEASE_SECONDS / 3`` while its request runs. Requests of one session in one worker
queue on a lock in memory first, so only one of them at a time polls the database.

Knows the save protocol and the store contract; no Quart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import SessionBusy, StoreError

if TYPE_CHECKING:
    from .saving import Loaded, SessionSaver

logger = logging.getLogger("quartsess")

#: How long a lease lasts without renewal: the longest a dead worker's hold can last.
LEASE_SECONDS = 5
# Waiting for another worker's hold: the first retry after 5 ms, doubling up to 100 ms.
_FIRST_RETRY = 0.005
_LONGEST_RETRY = 0.1


@dataclass(eq=False, slots=True)
class Hold:
    """A request's hold on its session's row."""

    id_hash: str
    owner: str
    local: asyncio.Lock
    renewing: asyncio.Task[None] | None = None
    released: bool = field(default=False)
    #: When the lease was last known to be ours (``time.monotonic()``).
    confirmed: float = field(default_factory=time.monotonic)
    #: The lease was lost (it ran out and may have been taken): the request must not write.
    lost: bool = False


@dataclass(slots=True)
class _Queue:
    """The requests of one session in this worker waiting for, or holding, its hold."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SessionHolds:
    """Takes and releases holds on sessions' rows; waits at most ``timeout`` seconds."""

    def __init__(self, saver: SessionSaver, timeout: float) -> None:
        self.saver = saver
        self.timeout = timeout
        self._queues: dict[str, _Queue] = {}

    async def take(
        self, loaded: Loaded
    ) -> tuple[Hold | None, tuple[Loaded, dict[str, Any]] | Literal[False] | None]:
        """Hold the row ``loaded`` came from. Returns the hold and what the session must
        adopt: ``False`` when what it loaded is current, the newer row and its content
        when another request changed it meanwhile, or ``None`` (and no hold) when the
        session ended meanwhile. Raises :class:`~quartsess.SessionBusy` after
        ``timeout`` seconds, and :class:`~quartsess.StoreError` when the store fails."""
        id_hash = loaded.record.id_hash
        queue = self._queues.setdefault(id_hash, _Queue())
        queue.users += 1
        deadline = time.monotonic() + self.timeout
        try:
            async with asyncio.timeout(self.timeout):
                await queue.lock.acquire()
        except TimeoutError:
            self._leave(id_hash, queue)
            raise SessionBusy(self.timeout) from None
        except BaseException:  # cancelled while waiting (the client went)
            self._leave(id_hash, queue)
            raise
        try:
            adopted = await self._take_lease(loaded, queue, deadline)
        except BaseException:
            queue.lock.release()
            self._leave(id_hash, queue)
            raise
        if adopted is None:
            queue.lock.release()
            self._leave(id_hash, queue)
            return None, None
        hold, fresh = adopted
        hold.renewing = asyncio.get_running_loop().create_task(
            self._renew(hold), name="quartsess-hold"
        )
        return hold, fresh

    async def _take_lease(
        self, loaded: Loaded, queue: _Queue, deadline: float
    ) -> tuple[Hold, tuple[Loaded, dict[str, Any]] | Literal[False]] | None:
        saver = self.saver
        store = saver.store
        owner = secrets.token_hex(8)
        current: Loaded = loaded
        fresh: tuple[Loaded, dict[str, Any]] | Literal[False] = False
        wait = _FIRST_RETRY
        while True:
            now = int(saver.clock())
            if await store.take_lease(
                current.record.id_hash,
                version=current.record.version,
                owner=owner,
                until=now + LEASE_SECONDS,
                now=now,
            ):
                return Hold(current.record.id_hash, owner, queue.lock), fresh
            newer = await saver.load(current.sid, current.record.id_hash)
            if newer is None:
                return None  # ended meanwhile (logged out, revoked, renewed, expired)
            if newer[0].record.version != current.record.version:
                current, fresh = newer[0], newer  # changed meanwhile: hold the new version
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SessionBusy(self.timeout)
            await asyncio.sleep(min(wait, remaining))  # another worker holds it
            wait = min(wait * 2, _LONGEST_RETRY)

    async def confirm(self, hold: Hold) -> None:
        """Before the save of a request that ran long: renew the lease if its last
        renewal is older than half of it, and mark the hold ``lost`` if that fails (the
        lease ran out, and another request may have held the session meanwhile)."""
        if hold.lost or time.monotonic() - hold.confirmed < LEASE_SECONDS / 2:
            return
        await self._renew_once(hold)

    async def _renew_once(self, hold: Hold) -> bool:
        until = int(self.saver.clock()) + LEASE_SECONDS
        try:
            kept = await self.saver.store.renew_lease(hold.id_hash, owner=hold.owner, until=until)
        except StoreError as error:
            logger.warning("a hold on a session could not be renewed: %s", error)
            return True  # not known to be lost: the next renewal, or the save, finds out
        if kept:
            hold.confirmed = time.monotonic()
        else:
            hold.lost = True
        return kept

    async def release(self, hold: Hold) -> None:
        """End ``hold`` (once; later calls do nothing). A store error is logged: the
        lease then runs out by itself."""
        if hold.released:
            return
        hold.released = True
        if hold.renewing is not None:
            hold.renewing.cancel()
        try:
            await self.saver.store.release_lease(hold.id_hash, owner=hold.owner)
        except StoreError as error:
            logger.warning(
                "a hold on a session was not released (it ends in %d s): %s",
                LEASE_SECONDS,
                error,
            )
        finally:
            hold.local.release()
            queue = self._queues.get(hold.id_hash)
            if queue is not None:
                self._leave(hold.id_hash, queue)

    def _leave(self, id_hash: str, queue: _Queue) -> None:
        queue.users -= 1
        if queue.users <= 0 and self._queues.get(id_hash) is queue:
            del self._queues[id_hash]

    async def _renew(self, hold: Hold) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            if not await self._renew_once(hold):
                # The row went (the request renewed the ID, or the session ended), or the
                # lease ran out while the store could not be reached.
                logger.info("a hold on a session ended before its request did")
                return
