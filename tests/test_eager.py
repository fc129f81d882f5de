"""Writes start on the caller's stack and become tasks only when they wait."""

from __future__ import annotations

import asyncio
import sys

import pytest

from quartsess.eager import start_eagerly


async def finished(task: asyncio.Future[None]) -> None:
    # asyncio.wait, unlike a timeout around `await task`, never cancels the task itself.
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done, "the task did not finish"


async def test_a_coroutine_that_never_waits_finishes_without_a_task() -> None:
    steps: list[str] = []

    async def write() -> None:
        steps.append("written")

    before = len(asyncio.all_tasks())
    assert start_eagerly(write()) is None
    assert steps == ["written"]
    assert len(asyncio.all_tasks()) == before


async def test_an_error_before_the_first_wait_is_raised_to_the_caller() -> None:
    async def write() -> None:
        raise LookupError("no such row")

    with pytest.raises(LookupError, match="no such row"):
        start_eagerly(write())


async def test_a_coroutine_that_waits_carries_on_in_a_task() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[str] = loop.create_future()
    second: asyncio.Future[str] = loop.create_future()
    steps: list[str] = []

    async def write() -> None:
        steps.append("started")
        steps.append(await first)
        await asyncio.sleep(0)
        steps.append(await second)

    task = start_eagerly(write())
    assert task is not None
    assert steps == ["started"]  # ran up to its first wait on the caller's stack
    first.set_result("first")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert steps == ["started", "first"]
    second.set_result("second")
    async with asyncio.timeout(5):
        await task
    assert steps == ["started", "first", "second"]


async def test_the_coroutine_sees_errors_of_what_it_waits_for() -> None:
    loop = asyncio.get_running_loop()
    awaited: asyncio.Future[None] = loop.create_future()
    seen: list[BaseException] = []

    async def write() -> None:
        try:
            await awaited
        except ConnectionError as error:
            seen.append(error)
            raise

    task = start_eagerly(write())
    assert task is not None
    awaited.set_exception(ConnectionError("server gone"))
    async with asyncio.timeout(5):
        with pytest.raises(ConnectionError, match="server gone"):
            await task
    assert [str(error) for error in seen] == ["server gone"]


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()
    cleaned_up = asyncio.Event()

    async def write() -> None:
        try:
            await never
        finally:
            cleaned_up.set()

    task = start_eagerly(write())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    await finished(task)
    assert task.cancelled()
    assert cleaned_up.is_set()
    assert never.cancelled()


async def test_cancelling_during_a_bare_yield_reaches_the_coroutine() -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def write() -> None:
        try:
            await asyncio.sleep(0)  # where start_eagerly hands over to the task
            await release.wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = start_eagerly(write())
    assert task is not None
    await asyncio.sleep(0)  # the task's first step: it waits out the bare yield for write
    task.cancel()
    await finished(task)
    assert task.cancelled()
    assert seen == ["cancelled"]


async def test_a_task_cancelled_before_its_first_step_closes_the_coroutine() -> None:
    cleaned_up = asyncio.Event()
    release = asyncio.Event()

    async def write() -> None:
        try:
            await asyncio.sleep(0)
            await release.wait()
        finally:
            cleaned_up.set()

    task = start_eagerly(write())
    assert task is not None
    task.cancel()  # before the task's first step: it is waiting out the bare yield
    await finished(task)
    assert task.cancelled()
    assert cleaned_up.is_set()


async def test_a_cancellation_after_the_awaited_future_is_done_is_not_dropped() -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def write() -> None:
        try:
            await ready
            seen.append("carried on")
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = start_eagerly(write())
    assert task is not None
    await asyncio.sleep(0)  # the task's first step: it now waits for `ready`
    ready.set_result(None)  # wakes the task on the next turn...
    assert task.cancel()  # ...but first it is cancelled; `ready` can no longer be
    await finished(task)
    assert task.cancelled()
    assert seen == ["cancelled"]


@pytest.mark.xfail(
    sys.version_info < (3, 12),
    strict=True,
    reason="3.11's helper runs the first steps on the caller's task, where a time-out binds",
)
async def test_a_time_out_entered_before_the_first_wait_cancels_the_write_not_the_caller() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()

    async def write() -> None:
        async with asyncio.timeout(0):  # expires on the next turn of the loop
            await never

    task = start_eagerly(write())
    assert task is not None
    caller_cancelled = False
    try:
        await finished(task)
    except asyncio.CancelledError:
        caller_cancelled = True
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=5)
        outcome = None if task.cancelled() else task.exception()
    assert not caller_cancelled, "the time-out cancelled the caller instead of the write"
    assert isinstance(outcome, TimeoutError)
    assert never.cancelled()
