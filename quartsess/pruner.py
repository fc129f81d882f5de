"""Deleting expired session rows: on demand, and as a background task of a serving app."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from .clock import Clock
from .errors import StoreError
from .lifecycle import Lifecycle

logger = logging.getLogger("quartsess")

JITTER = 0.2
LOCK_NAME = "quartsess-prune"
LOCK_RETRY_SECONDS = 0.5


class Pruner:
    """Deletes the rows whose deadline has passed, ``batch_size`` at a time, through
    ``lifecycle`` (which reports each batch).

    Each batch is one statement (the store's ``delete_expired``), and after each
    the pruner rests ``rest`` times as long as the batch took (at least ``pause``
    seconds), so requests keep being served at their usual latency during a long prune:
    on SQLite, whose one write lock request writes need too, the pruner holds it at
    most ``1 / (1 + rest)`` of the time. On PostgreSQL and MariaDB/MySQL a run holds a
    database lock (advisory lock, ``GET_LOCK``), so at most one worker prunes at a time;
    on SQLite concurrent runs are correct, only redundant.

    :meth:`start` runs it in the background every ``interval`` seconds (± 20 %; the first
    run at a random point of the first interval, so workers started together spread out).
    ``clock`` gives "now" in epoch seconds, as the session interface sees it.
    """

    def __init__(
        self,
        lifecycle: Lifecycle,
        *,
        clock: Clock,
        interval: float,
        batch_size: int | None = None,
        pause: float = 0.0,
        rest: float | None = None,
        rng: Callable[[float, float], float] | None = None,
    ) -> None:
        store = lifecycle.store
        if batch_size is None:
            batch_size = store.prune_batch_size
        if rest is None:
            rest = store.prune_rest
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.lifecycle = lifecycle
        self.store = store
        self.clock = clock
        self.interval = interval
        self.batch_size = batch_size
        self.pause = pause
        self.rest = rest
        # Jitter only spreads workers out; it is not a secret.
        self._uniform = rng or random.Random().uniform  # noqa: S311
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._waiters: list[asyncio.Future[int | None]] = []
        self._stopping = False
        self.runs = 0
        """Background runs finished so far (successful, skipped or failed)."""

    # -- one prune ----------------------------------------------------------------

    async def prune(self) -> int:
        """Delete every row expired now, in batches; returns how many went.

        On PostgreSQL, waits while another worker holds the prune lock."""
        while True:
            deleted = await self.prune_unless_busy()
            if deleted is not None:
                return deleted
            await asyncio.sleep(LOCK_RETRY_SECONDS)

    async def prune_unless_busy(self) -> int | None:
        """Like :meth:`prune`, but ``None`` at once if another worker is pruning."""
        async with self.store.try_lock(LOCK_NAME) as acquired:
            if not acquired:
                return None
            return await self._delete_all(int(self.clock()))

    async def _delete_all(self, now: int) -> int:
        total = 0
        while True:
            started = time.monotonic()
            deleted = await self.lifecycle.prune(now, self.batch_size)
            total += deleted
            if deleted < self.batch_size or self._stopping:
                return total
            # Let waiting requests (and, on SQLite, their writes) go first.
            await asyncio.sleep(max(self.pause, (time.monotonic() - started) * self.rest))

    # -- background task ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the background task in the running event loop (no-op if the interval
        is 0 or it already runs)."""
        if self.interval <= 0 or self.running:
            return
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._loop(self._wake), name="quartsess-pruner")

    async def stop(self) -> None:
        """Cancel the background task and wait until it has finished."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we were cancelled ourselves, not just the pruner
        for waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()

    def wake(self) -> None:
        """Start the next background run now instead of at the end of the interval."""
        if self._wake is not None:
            self._wake.set()

    async def next_run(self) -> int | None:
        """Wait for the current or next background run to finish; returns the rows it
        deleted, or ``None`` if it failed or another worker was pruning."""
        if not self.running:
            raise RuntimeError("the pruner is not running")
        waiter: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    async def _loop(self, wake: asyncio.Event) -> None:
        delay = self.interval * self._uniform(0.0, 1.0)
        while True:
            try:
                async with asyncio.timeout(delay):
                    await wake.wait()
            except TimeoutError:
                pass
            wake.clear()
            result = await self._run_logged()
            self.runs += 1
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(result)
            delay = self.interval * self._uniform(1 - JITTER, 1 + JITTER)

    async def _run_logged(self) -> int | None:
        started = time.monotonic()
        run = asyncio.ensure_future(self.prune_unless_busy())
        try:
            deleted = await asyncio.shield(run)
        except asyncio.CancelledError:
            # Stopping: end at the next batch boundary instead of cancelling a statement in
            # flight (drivers tear the connection down noisily), and release the lock.
            self._stopping = True
            await asyncio.wait([run])
            error = None if run.cancelled() else run.exception()
            if isinstance(error, StoreError) and not error.logged:
                logger.warning("the last pruning batch failed while stopping: %s", error)
            elif error is not None and not isinstance(error, StoreError):
                logger.error("unexpected error while pruning expired sessions", exc_info=error)
            raise
        except StoreError as error:
            logger.log(
                logging.DEBUG if error.logged else logging.ERROR,
                "pruning expired sessions failed; retrying in about %.0f s: %s",
                self.interval,
                error,
            )
            return None
        except Exception:
            # A bug must not end pruning for the life of the app; log it loudly instead.
            logger.exception("unexpected error while pruning expired sessions")
            return None
        if deleted is None:
            logger.debug("another worker is pruning expired sessions; skipped this run")
        elif deleted:
            logger.info("pruned %d expired sessions in %.2f s", deleted, time.monotonic() - started)
        return deleted
