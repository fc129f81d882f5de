"""SQLite files that turn unwritable, are deleted or are replaced under running workers
(issue 25): two real hypercorn workers on real files, driven over HTTP.

Making files immutable needs root and a filesystem with inode flags: the test's own
directory when it has them, else a small ext4 image the test loop-mounts. Elsewhere the
test is skipped with the reason; when CI=true it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from quartsess.errors import SessionStoreUnavailable
from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore
from tests.conftest import IN_CI, SECRET, FakeClock
from tests.servers import Server, hypercorn_server, server_env

pytestmark = pytest.mark.timeout(120)

USERS = 30
SUFFIXES = ("", "-wal", "-shm")
ACCESS = re.compile(r'<(\d+)> "(?:GET|POST) \S+ [^"]*" (\d{3}) ')


def skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}; required when CI=true")
    pytest.skip(reason)


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed programs from PATH, the test's own paths
        [str(part) for part in command], capture_output=True, text=True, timeout=30, check=False
    )


@contextmanager
def filesystem_with_inode_flags(tmp_path: Path) -> Iterator[Path]:
    """A directory where ``chattr +i`` works: ``tmp_path`` if its filesystem has inode
    flags, else a 64 MiB ext4 image mounted under it (unmounted on the way out)."""
    if os.geteuid() != 0:
        skip_or_fail("making files immutable (chattr +i) needs root")
    if shutil.which("chattr") is None:
        skip_or_fail("chattr is not installed")
    probe = tmp_path / "probe"
    probe.touch()
    has_flags = run("chattr", "+i", probe).returncode == 0
    run("chattr", "-i", probe)
    probe.unlink()
    if has_flags:
        yield tmp_path
        return
    image, mount_point = tmp_path / "ext4.img", tmp_path / "ext4"
    with image.open("wb") as sink:
        sink.truncate(64 * 1024 * 1024)
    made = run("mkfs.ext4", "-q", "-F", image)
    if made.returncode != 0:
        skip_or_fail(f"no filesystem with inode flags here: mkfs.ext4: {made.stderr.strip()}")
    mount_point.mkdir()
    mounted = run("mount", "-o", "loop", image, mount_point)
    if mounted.returncode != 0:
        skip_or_fail(f"no filesystem with inode flags here: mount: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if run("umount", mount_point).returncode != 0:
            run("umount", "-l", mount_point)


@contextmanager
def immutable(paths: Sequence[Path]) -> Iterator[None]:
    """``chattr +i`` on ``paths`` for the block; ``-i`` again whatever happens."""
    try:
        for path in paths:
            made = run("chattr", "+i", path)
            assert made.returncode == 0, made.stderr
        yield
    finally:
        for path in paths:
            if path.exists():
                run("chattr", "-i", path)


@contextmanager
def serving(tmp_path: Path, database: Path) -> Iterator[Server]:
    """The JSON load app in hypercorn (hypercorn.toml, two workers) on ``database``, its
    pruner running every 0.2 s (so maintenance meets the fault too)."""
    env = server_env(
        tmp_path / "instance",
        QUARTSESS_SECRET_KEY=SECRET,
        QUARTSESS_DB_URL=f"sqlite+aiosqlite:///{database}",
        QUARTSESS_PRUNE_INTERVAL="0.2",
    )
    log = tmp_path / "server.log"
    with hypercorn_server(
        env, log, application="tests.loadapp:create_app()", ready_path="/health"
    ) as server:
        yield server


def user(server: Server) -> httpx.AsyncClient:
    # No keep-alive: each request is a new connection, which either worker may accept.
    return httpx.AsyncClient(
        base_url=server.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
    )


async def log_in(clients: Sequence[httpx.AsyncClient]) -> None:
    for number, client in enumerate(clients):
        assert (await client.post(f"/login/user{number}")).status_code == 200
        assert (await client.post("/visit")).json() == {"visits": 1}


async def every_user(clients: Sequence[httpx.AsyncClient], method: str, path: str) -> list[int]:
    responses = await asyncio.gather(*(c.request(method, path) for c in clients))
    for response in responses:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "5"
    return [response.status_code for response in responses]


def access_log(server: Server, since: int) -> list[tuple[str, str]]:
    """(worker pid, status) of each request logged after the first ``since`` characters."""
    return ACCESS.findall(server.output()[since:])


async def all_refused_by_both_workers(server: Server, clients: Sequence[httpx.AsyncClient]) -> None:
    """Reads and writes of every user get 503 until both workers have answered some
    (which worker takes a connection is the kernel's choice: bounded rounds)."""
    since = len(server.output())
    for _ in range(20):
        assert set(await every_user(clients, "GET", "/state")) == {503}
        assert set(await every_user(clients, "POST", "/visit")) == {503}
        answered = access_log(server, since)
        if len({pid for pid, status in answered if status == "503"}) == 2:
            break
    assert {status for _, status in access_log(server, since)} == {"503"}
    assert len({pid for pid, _ in access_log(server, since)}) == 2, "one worker got nothing"


async def until_served(client: httpx.AsyncClient, path: str, deadline: float) -> Any:
    while True:
        response = await client.get(path)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        await asyncio.sleep(0.05)


def assert_alive(server: Server, workers: list[int]) -> None:
    assert server.process.poll() is None, server.output()
    assert sorted(server.worker_pids()) == sorted(workers), server.output()


def assert_logged_once_per_worker(output: str, message: str) -> None:
    count = output.count(message)
    assert 1 <= count <= 2, f"{message!r} logged {count} times:\n{output}"


def assert_clean(output: str) -> None:
    for problem in ("Traceback", "Fatal Python error", "Bus error", "session store unavailable"):
        assert problem not in output, output


def rows(database: Path) -> int:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        count: int = connection.execute("SELECT count(*) FROM quart_sessions").fetchone()[0]
        return count
    finally:
        connection.close()


def back_up(database: Path, to: Path) -> None:
    source, target = sqlite3.connect(database), sqlite3.connect(to)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


async def test_immutable_files_give_503s_the_workers_live_and_writes_resume(
    tmp_path: Path,
) -> None:
    with filesystem_with_inode_flags(tmp_path) as directory:
        database = directory / "quartsess.sqlite3"
        with serving(tmp_path, database) as server:
            workers = server.worker_pids()
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(user(server)) for _ in range(USERS)]
                await log_in(clients)
                with immutable([Path(f"{database}{suffix}") for suffix in SUFFIXES]):
                    await all_refused_by_both_workers(server, clients)
                    assert_alive(server, workers)
                # Writable again: the same workers serve every session, intact, and write.
                for number, client in enumerate(clients):
                    assert (await client.post("/visit")).json() == {"visits": 2}
                    assert (await client.get("/state")).json() == {
                        "user": f"user{number}",
                        "visits": 2,
                    }
            assert_alive(server, workers)
            output = server.output()
        assert_logged_once_per_worker(output, "-shm is immutable, so it cannot be written")
        assert_logged_once_per_worker(output, f"the SQLite database {database} is usable again")
        assert_clean(output)
        assert rows(database) == USERS


async def test_a_deleted_database_is_never_written_again_until_one_is_put_back(
    tmp_path: Path,
) -> None:
    database = tmp_path / "quartsess.sqlite3"
    backup = tmp_path / "backup.sqlite3"
    with serving(tmp_path, database) as server:
        workers = server.worker_pids()
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(user(server)) for _ in range(USERS)]
            await log_in(clients)
            back_up(database, backup)
            assert set(await every_user(clients, "POST", "/visit")) == {200}

            for suffix in SUFFIXES:
                os.unlink(f"{database}{suffix}")
            # Logins and visits would go into the deleted file: refused at once.
            await all_refused_by_both_workers(server, clients)
            assert set(await every_user(clients, "POST", "/cart/tea/add")) == {503}
            assert not database.exists()  # and no empty database in its place
            assert_alive(server, workers)

            # Someone acts: the backup is put back. Its sessions are served and written.
            staged = tmp_path / "staged.sqlite3"
            shutil.copyfile(backup, staged)
            staged.replace(database)
            deadline = time.monotonic() + 10
            for number, client in enumerate(clients):
                state = await until_served(client, "/state", deadline)
                assert state == {"user": f"user{number}", "visits": 1}
            assert set(await every_user(clients, "POST", "/visit")) == {200}
        assert_alive(server, workers)
        output = server.output()
    assert_logged_once_per_worker(output, f"the SQLite database {database} was deleted while")
    assert_logged_once_per_worker(output, "this worker now uses the database at that path")
    assert_clean(output)
    assert rows(database) == USERS


async def test_a_replaced_database_is_noticed_within_a_second_and_opened_once_safe(
    tmp_path: Path,
) -> None:
    database = tmp_path / "quartsess.sqlite3"
    backup = tmp_path / "backup.sqlite3"
    with serving(tmp_path, database) as server:
        workers = server.worker_pids()
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(user(server)) for _ in range(USERS)]
            await log_in(clients)
            back_up(database, backup)

            # The backup moved in over the live database; the old -wal and -shm stay.
            staged = tmp_path / "staged.sqlite3"
            shutil.copyfile(backup, staged)
            staged.replace(database)
            replaced, since = time.monotonic(), len(server.output())
            while len({pid for pid, status in access_log(server, since) if status == "503"}) < 2:
                # Each worker looks at the file at most a second after its last look.
                assert time.monotonic() - replaced < 2, "not noticed within a second"
                await every_user(clients, "GET", "/state")
            # Until the old -wal and -shm are moved away, nothing is read or written.
            await all_refused_by_both_workers(server, clients)
            assert_alive(server, workers)

            for suffix in ("-wal", "-shm"):
                os.rename(f"{database}{suffix}", tmp_path / f"old{suffix}")
            deadline = time.monotonic() + 10
            for number, client in enumerate(clients):
                state = await until_served(client, "/state", deadline)
                assert state == {"user": f"user{number}", "visits": 1}
            assert set(await every_user(clients, "POST", "/visit")) == {200}
            for number, client in enumerate(clients):
                assert (await client.get("/state")).json() == {
                    "user": f"user{number}",
                    "visits": 2,
                }
        assert_alive(server, workers)
        output = server.output()
    assert_logged_once_per_worker(output, "of the old database are still there")
    assert_logged_once_per_worker(output, "this worker now uses the database at that path")
    assert_clean(output)
    assert rows(database) == USERS


# -- one worker, without hypercorn ------------------------------------------------------

# A worker's store on a file that turns immutable under it: every store call (requests'
# and maintenance's) fails as a StoreError, and the store closes (the worker stops)
# without touching the files. In a process of its own, as a SIGBUS would end it.
STOPPING_WORKER = """
import asyncio, subprocess, sys
from sqlalchemy.engine import make_url
from quartsess.errors import StoreError
from quartsess.stores.base import StoredSession
from quartsess.stores.sql import SqlStore

async def main(database):
    store = SqlStore(make_url(f"sqlite+aiosqlite:///{database}"), "quart_sessions", {})
    store.keep_connections(True)
    await store.prepare(create_table=True)
    for n in range(30):
        await store.insert(StoredSession(f"{n:064x}", b"sealed", 1, 1, 1, 9))
    await store.delete_expired(0, 50)
    subprocess.run(["chattr", "+i", *sys.argv[2:]], check=True)
    calls = {
        "load": lambda: store.load(f"{1:064x}"),
        "insert": lambda: store.insert(StoredSession("f" * 64, b"sealed", 1, 1, 1, 9)),
        "prune": lambda: store.delete_expired(10, 50),
        "stats": lambda: store.stats(0),
    }
    for name, call in calls.items():
        try:
            await call()
        except StoreError as error:
            print(name, type(error).__name__, getattr(error, "logged", None), flush=True)
    await store.close()
    print("closed", flush=True)

asyncio.run(main(sys.argv[1]))
"""


def test_a_worker_stopping_while_its_files_are_immutable_exits_cleanly(tmp_path: Path) -> None:
    with filesystem_with_inode_flags(tmp_path) as directory:
        database = directory / "quartsess.sqlite3"
        files = [Path(f"{database}{suffix}") for suffix in SUFFIXES]
        try:
            ran = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
                [sys.executable, "-c", STOPPING_WORKER, database, *files],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=Path(__file__).resolve().parent.parent,
            )
        finally:
            for path in files:
                if path.exists():
                    run("chattr", "-i", path)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines() == [
            "load SessionStoreUnavailable True",
            "insert SessionStoreUnavailable True",
            "prune SessionStoreUnavailable True",
            "stats SessionStoreUnavailable True",
            "closed",
        ], ran.stderr
        assert ran.stderr.count("-shm is immutable, so it cannot be written") == 1, ran.stderr
        assert rows(database) == 30


def row(key: str) -> StoredSession:
    return StoredSession(key * 64, b"sealed", 1, 1, 1, 9)


async def serving_store(database: Path, clock: FakeClock) -> SqlStore:
    store = SqlStore(make_url(f"sqlite+aiosqlite:///{database}"), "quart_sessions", {})
    files = getattr(store.connections, "files", None)
    if files is not None:
        files._clock = clock
    store.keep_connections(True)
    await store.prepare(create_table=True)
    return store


async def test_a_replaced_database_file_is_noticed_at_the_next_look_a_second_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "quartsess.sqlite3"
    clock = FakeClock(0.0)
    store = await serving_store(database, clock)
    try:
        await store.insert(row("a"))
        back_up(database, tmp_path / "backup.sqlite3")
        await store.insert(row("b"))
        os.replace(tmp_path / "backup.sqlite3", database)  # the old -wal and -shm stay

        clock.advance(0.5)  # not looked at yet: still the old file
        assert await store.load("b" * 64) is not None
        clock.advance(0.6)
        with pytest.raises(SessionStoreUnavailable, match="still there") as refused:
            await store.load("b" * 64)
        assert refused.value.logged
        with pytest.raises(SessionStoreUnavailable, match="still there"):
            await store.insert(row("c"))

        for suffix in ("-wal", "-shm"):
            os.rename(f"{database}{suffix}", tmp_path / f"old{suffix}")
        assert await store.load("a" * 64) is not None  # the new file
        assert await store.load("b" * 64) is None
        await store.insert(row("c"))
        assert (await store.stats(0)).rows == 2  # "a" and "c", through maintenance too
    finally:
        await store.close()
    assert rows(database) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2, errors
    assert "still there" in errors[0]
    assert "this worker now uses the database at that path" in errors[1]


async def test_a_deleted_write_ahead_log_stops_the_worker_until_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "quartsess.sqlite3"
    store = await serving_store(database, FakeClock(0.0))
    try:
        for key in "abc":
            await store.insert(row(key))
        for suffix in ("-wal", "-shm"):
            os.unlink(f"{database}{suffix}")
        for _ in range(3):
            with pytest.raises(SessionStoreUnavailable, match="until the app is restarted"):
                await store.load("a" * 64)
            with pytest.raises(SessionStoreUnavailable, match="until the app is restarted"):
                await store.insert(row("d"))
            with pytest.raises(SessionStoreUnavailable, match="until the app is restarted"):
                await store.delete_expired(10, 50)
    finally:
        await store.close()  # the last to close copies the deleted log into the file
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert rows(database) == 3


def test_a_checkpoint_that_fails_for_a_reason_other_than_a_lock_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint the disk refuses (here: through a read-only connection, SQLite's
    disk I/O error) leaves the log growing; it is said once, not once per checkpoint."""
    import logging

    from quartsess.stores import sqlite_runner

    path = tmp_path / "checkpoint.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None)
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("CREATE TABLE t (x)")
        writer.execute("INSERT INTO t VALUES (1)")
        reader.execute("SELECT * FROM t").fetchall()
        sqlite_runner._logged_checkpoint_failures.clear()
        with caplog.at_level(logging.WARNING, logger="quartsess"):
            assert sqlite_runner._checkpoint(reader) is None
            assert sqlite_runner._checkpoint(reader) is None
        failures = [r for r in caplog.records if "checkpoint of the SQLite log failed" in r.message]
        assert len(failures) == 1
        assert sqlite_runner._checkpoint(writer) is not None  # the writer's runs
    finally:
        reader.close()
        writer.close()
        sqlite_runner._logged_checkpoint_failures.clear()
