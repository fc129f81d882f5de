"""Start a coroutine on the caller's stack and make a task of it only if it suspends.

A session write on SQLite's inline path never suspends: giving it a task of its own costs
three event-loop iterations and a task per write for nothing. Python 3.12's eager task
factory does this for a whole loop; quartsess must not change the app's loop, so it does
it for its own writes only: on 3.12+ with asyncio's eager task, on 3.11 with a helper.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

if sys.version_info >= (3, 12):

    def start_eagerly(coroutine: Coroutine[Any, Any, None]) -> asyncio.Future[None] | None:
        """Run ``coroutine`` until it first waits for something.

        Returns None when it finished without waiting (an exception it raised propagates
        here), otherwise the task that carries it on from where it stopped. The first
        steps already run as that task, so a time-out entered there binds to it."""
        task = asyncio.eager_task_factory(asyncio.get_running_loop(), coroutine)
        if not task.done():
            return task
        task.result()  # raises what the coroutine raised
        return None

else:

    def start_eagerly(coroutine: Coroutine[Any, Any, None]) -> asyncio.Future[None] | None:
        """Run ``coroutine`` until it first waits for something.

        Returns None when it finished without waiting (an exception it raised propagates
        here), otherwise a task that carries it on from where it stopped.

        Only for coroutines that enter no ``asyncio.timeout`` before they first wait: a
        time-out binds to the task running when it is entered, which here is the
        caller's, so it would cancel the caller instead."""
        try:
            awaited = coroutine.send(None)
        except StopIteration:
            return None
        task = asyncio.ensure_future(_carry_on(coroutine, awaited))
        # A task cancelled before its first step (only when the loop is torn down: callers
        # shield it) never enters _carry_on, so the coroutine would be left suspended;
        # close it (its `finally` blocks run, without awaiting) rather than leave that to
        # the garbage collector.
        task.add_done_callback(lambda _: coroutine.close())
        return task


async def _carry_on(coroutine: Coroutine[Any, Any, None], awaited: Any) -> None:
    """Drive a started coroutine as a task would: resume it whenever what it waits for
    is done."""
    while True:
        cancelled: asyncio.CancelledError | None = None
        if awaited is None:  # a bare yield (asyncio.sleep(0)): only a turn of the loop
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError as error:
                cancelled = error
        else:
            # What the coroutine yielded is the future its own `await` is blocked on; a
            # task resets this flag before waiting on it, and so do we.
            awaited._asyncio_future_blocking = False
            try:
                await awaited
            except asyncio.CancelledError as error:
                # Cancelling this task cancels that future first, as it would a task's; the
                # coroutine then reads the cancellation from it. If the future could not be
                # cancelled (it was already done), the cancellation is this task's own:
                # hand it on rather than drop it.
                if not awaited.cancelled():
                    cancelled = error
            except BaseException:  # noqa: S110 - the coroutine reads the outcome itself
                # On resuming, the coroutine's `await` raises the future's exception.
                pass
        try:
            awaited = coroutine.send(None) if cancelled is None else coroutine.throw(cancelled)
        except StopIteration:
            return
