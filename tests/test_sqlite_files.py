"""The SQLite file: private to its owner, and a write-ahead log that shrinks after a burst."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from quartsess.stores import sqlite_runner
from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore
from quartsess.stores.sqlite_runner import JOURNAL_SIZE_LIMIT, SqliteRunner
from tests.conftest import AppFactory
from tests.support import add_routes


def size(path: str) -> int:
    return os.stat(path).st_size


def file_modes(paths: list[str]) -> dict[str, int]:
    return {
        os.path.basename(p): stat.S_IMODE(os.stat(p).st_mode) for p in paths if os.path.exists(p)
    }


async def test_the_database_and_its_wal_files_are_private(
    make_app: AppFactory, backend: str, db_url: str
) -> None:
    if backend != "sqlite":
        return  # a server's files are the server's business
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        await test_app.test_client().get("/visits")
        path = Path(make_url(db_url).database or "")
        files = [str(path), f"{path}-wal", f"{path}-shm"]
        modes = file_modes(files)
    assert path.name in modes and len(modes) == 3, modes
    assert all(mode & 0o077 == 0 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}


async def test_the_write_ahead_log_shrinks_back_after_a_burst(tmp_path: Path) -> None:
    path = tmp_path / "burst.sqlite3"
    store = SqlStore(make_url(f"sqlite+aiosqlite:///{path}"), "quart_sessions", {})
    store.keep_connections(True)
    wal = f"{path}-wal"
    try:
        await store.prepare(create_table=True)
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM quart_sessions").fetchone()  # pins the WAL
        try:
            for n in range(4_000):  # ~4 KiB each: the WAL grows past the limit
                await store.insert(StoredSession(f"{n:064x}", os.urandom(4000), 1, 1, 1, 9))
        finally:
            reader.execute("COMMIT")
            reader.close()
        assert size(wal) > 2 * JOURNAL_SIZE_LIMIT
        # Ordinary traffic afterwards: checkpoints (every CHECKPOINT_EVERY writes, on the
        # store's thread) catch up, the log restarts, and it is cut back to the limit.
        give_up = time.monotonic() + 30
        n = 0
        while size(wal) > JOURNAL_SIZE_LIMIT and time.monotonic() < give_up:
            for _ in range(SqliteRunner.CHECKPOINT_EVERY):
                await store.touch(f"{n % 4000:064x}", touched_at=2, expires_at=9, client=None)
                n += 1
            await asyncio.sleep(0.05)  # the checkpoint of a 100+ MB log takes a while
        assert size(wal) <= JOURNAL_SIZE_LIMIT
        check = sqlite3.connect(path)
        try:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            check.close()
    finally:
        await store.close()


async def test_under_writes_with_no_gap_the_log_restarts_and_every_write_runs_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Back-to-back writes leave a checkpoint on the thread no gap to finish in; the
    # writes that wait for one (on the loop, not handed to the thread) make that gap.
    path = tmp_path / "steady.sqlite3"
    store = SqlStore(make_url(f"sqlite+aiosqlite:///{path}"), "quart_sessions", {})
    store.keep_connections(True)
    wal = f"{path}-wal"
    write_threads: set[str] = set()
    run_sqlite = sqlite_runner._run_sqlite

    def recording(connection: sqlite3.Connection, sql: str, *args: Any) -> Any:
        if sql.lstrip().upper().startswith("INSERT"):
            write_threads.add(threading.current_thread().name)
        return run_sqlite(connection, sql, *args)

    monkeypatch.setattr(sqlite_runner, "_run_sqlite", recording)
    try:
        await store.prepare(create_table=True)
        sizes = [0]
        cut_back = 0
        for n in range(30_000):  # ~3 KiB each; bounded: until the log restarted 3 times
            await store.insert(StoredSession(f"{n:064x}", os.urandom(3000), 1, 1, 1, 9))
            if n % 100 == 0:
                sizes.append(size(wal))
                cut_back += sizes[-1] < sizes[-2]  # each restart cuts the file back
                if cut_back == 3 or sizes[-1] > 32 * JOURNAL_SIZE_LIMIT:
                    break
        # How far the log grows between restarts depends on how long a checkpoint takes
        # against the writes: about 20 MB measured, over 128 MiB with every checkpoint
        # slowed to 0.3 s. Without any restart, the log would pass the 256 MiB cap.
        assert cut_back == 3, sizes
        assert write_threads == {threading.main_thread().name}
    finally:
        await store.close()
