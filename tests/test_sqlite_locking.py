"""SQLite shared by several processes: a writer that finds the file locked waits off the
event loop and then succeeds; the loop keeps serving meanwhile."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore


async def test_a_locked_database_delays_a_write_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.sqlite3"
    store = SqlStore.from_url(make_url(f"sqlite+aiosqlite:///{path}"), "quart_sessions", {})
    try:
        await store.prepare(create_table=True)
        row = StoredSession("cd" * 32, b"payload", 1, 1, 1, 100)
        await store.insert(row)

        other_process = sqlite3.connect(path, isolation_level=None)
        other_process.execute("BEGIN IMMEDIATE")  # holds the write lock, as another worker would
        try:
            write = asyncio.ensure_future(
                store.touch(row.id_hash, touched_at=5, expires_at=200, client=None)
            )
            ticks = 0
            for _ in range(200):  # the loop keeps turning while the write waits
                await asyncio.sleep(0)
                ticks += 1
            assert ticks == 200
            assert not write.done()
            assert await store.load(row.id_hash) == row  # reads are not blocked (WAL)
        finally:
            other_process.execute("COMMIT")
            other_process.close()
        async with asyncio.timeout(10):
            assert await write is True
        stored = await store.load(row.id_hash)
        assert stored is not None and stored.expires_at == 200
    finally:
        await store.close()


ROUNDS = 15
WORKERS = 6


def test_workers_opening_a_new_file_at_once_all_start(tmp_path: Path) -> None:
    """Each worker has its own loop and thread, as hypercorn's processes do. Switching a
    new file to WAL from several connections at once makes SQLite refuse all but one
    without waiting; every worker must still start, and the file must end up in WAL."""

    def worker(path: Path, barrier: threading.Barrier) -> None:
        async def start() -> None:
            store = SqlStore.from_url(make_url(f"sqlite+aiosqlite:///{path}"), "quart_sessions", {})
            try:
                barrier.wait(timeout=10)
                await store.prepare(create_table=True)
                assert await store.load("ab" * 32) is None  # the per-request path opens too
            finally:
                await store.close()

        asyncio.run(start())

    for round_number in range(ROUNDS):
        path = tmp_path / f"new-{round_number}.sqlite3"
        barrier = threading.Barrier(WORKERS)
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [pool.submit(worker, path, barrier) for _ in range(WORKERS)]
            errors = [future.exception(timeout=30) for future in futures]
        assert errors == [None] * WORKERS, f"round {round_number}: {errors}"
        check = sqlite3.connect(path)
        try:
            assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            check.close()


async def test_an_in_memory_uri_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite+aiosqlite:///file:sessions?mode=memory&cache=shared&uri=true"
    store = SqlStore.from_url(make_url(url), "quart_sessions", {})
    try:
        await store.prepare(create_table=True)
        row = StoredSession("ef" * 32, b"payload", 1, 1, 1, 100)
        await store.insert(row)
        assert await store.load(row.id_hash) == row
    finally:
        await store.close()
    assert os.listdir(tmp_path) == []
