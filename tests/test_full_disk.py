"""A full disk under SQLite: the database on a small filesystem of its own (a tmpfs the
test mounts, as root), filled up while sessions are in use, then freed again.

Not root (a user's machine): skipped with the reason. Required when CI=true.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from quart import Quart

from quartsess import Session
from tests.conftest import IN_CI, SECRET, FakeClock
from tests.support import add_routes

SIZE_MIB = 4
BIG = "x" * 40_000  # more than the WAL has room for; under SESSION_MAX_BYTES (64 KiB)


def skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}; required when CI=true")
    pytest.skip(reason)


@contextmanager
def small_filesystem(mount_point: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted at ``mount_point``, unmounted on the way out."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a small filesystem needs root")
    mount_point.mkdir()
    mounted = subprocess.run(  # noqa: S603 - fixed arguments, mount(8) from PATH
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(mount_point)],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], timeout=30, check=False)  # noqa: S603,S607


def fill(filesystem: Path) -> Path:
    """Write a file until the filesystem has no byte left; returns it."""
    filler = filesystem / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as sink:
        for _ in range(10 * SIZE_MIB * 16):  # bounded: more chunks than fit
            try:
                sink.write(chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                break
        else:
            raise AssertionError("the filesystem never filled up")
        for size in (4096, 512, 1):  # the last pages, then the last bytes
            while True:
                try:
                    sink.write(b"\0" * size)
                except OSError:
                    break
    return filler


def integrity(database: Path) -> str:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        result: str = connection.execute("PRAGMA integrity_check").fetchone()[0]
        return result
    finally:
        connection.close()


def make_app(database: Path) -> Quart:
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        SESSION_DB_URL=f"sqlite+aiosqlite:///{database}",
        SESSION_PRUNE_INTERVAL=0,
        TESTING=True,
    )
    Session(app, clock=FakeClock())
    return add_routes(app)


async def test_a_full_disk_refuses_writes_keeps_reads_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_filesystem(tmp_path / "small", SIZE_MIB) as filesystem:
        database = filesystem / "sessions.sqlite3"
        app = make_app(database)
        async with app.test_app() as test_app:
            users = [test_app.test_client() for _ in range(5)]
            for number, user in enumerate(users):
                response = await user.post("/set", json={"name": f"user{number}", "n": number})
                assert response.status_code == 200
            filler = fill(filesystem)

            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="quartsess"):
                # Writes that need room: a new visitor, and a user's bigger session.
                newcomer = test_app.test_client()
                assert (await newcomer.post("/set", json={"blob": BIG})).status_code == 503
                assert (await users[0].post("/set", json={"blob": BIG})).status_code == 503
                # Small writes may still fit in pages SQLite has already: 200 or 503,
                # never anything else, and a 200 is a write that stays.
                visits = [0] * len(users)
                for _ in range(10):
                    for number, user in enumerate(users):
                        status = (await user.get("/visits")).status_code
                        assert status in (200, 503)
                        visits[number] += status == 200
            unavailable = [r.getMessage() for r in caplog.records if r.name == "quartsess"]
            assert unavailable, "a refused write must be logged"
            assert all("disk is full" in message for message in unavailable), unavailable

            # Reads keep working, and nothing of the refused writes shows.
            for number, user in enumerate(users):
                response = await user.get("/get")
                assert response.status_code == 200
                expected: dict[str, object] = {"name": f"user{number}", "n": number}
                if visits[number]:
                    expected["visits"] = visits[number]
                assert await response.get_json() == expected
            assert integrity(database) == "ok"

            # Room again: the same app, without a restart, writes and keeps everything.
            filler.unlink()
            assert (await users[0].post("/set", json={"blob": BIG})).status_code == 200
            assert (await newcomer.post("/set", json={"blob": "small"})).status_code == 200
            assert (await (await users[0].get("/get/blob")).get_json())["value"] == BIG
            for number, user in enumerate(users[1:], start=1):
                assert (await user.get("/visits")).status_code == 200
                response = await user.get("/get")
                expected = {"name": f"user{number}", "n": number, "visits": visits[number] + 1}
                assert await response.get_json() == expected
        assert integrity(database) == "ok"
