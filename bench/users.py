"""Listing and revoking the sessions of one user in a large table.

    .venv/bin/python bench/users.py --backend sqlite
    .venv/bin/python bench/users.py --backend postgresql [--url postgresql+asyncpg://...]

Fills a fresh sessions table with ``--rows`` rows (default one million) in the library's
format: ``--rows - --user-sessions`` rows of other users, written by bulk ``INSERT ...
SELECT`` statements that the database itself generates (random ``id_hash`` and
``user_hash`` values, 250-byte payloads, 120-byte client blobs, live deadlines), in chunks
and under a time limit (``--fill-timeout``); then ``--user-sessions`` (default 1,000)
sessions of one user, each stored by a real login request through Quart's test client
(so their user hash, handle and encrypted client record are the library's own).

Then it times, ``--runs`` times each (default 7), and prints the median, min and max:

- ``await ext.user_sessions(user)``: the user's 1,000 live sessions, decrypted client
  records included (and, apart, the store's SELECT of those rows alone);
- ``await ext.revoke_user_sessions(user)``: deletes the 1,000 rows. Before each run the
  rows are put back from a copy taken once (same ID hashes, same ciphertext), untimed.

Both tables (the sessions table and the copy) are dropped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

from quart import Quart, session
from sqlalchemy import text
from sqlalchemy.engine import Connection

from quartsess import Session

URLS = {
    "postgresql": os.environ.get(
        "QUARTSESS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
}
USER = "bench-user"
OTHER_HANDLE_PREFIX = "bench-"  # the generated rows' handles; real ones are random
CHUNK_ROWS = 100_000
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
)
COLUMNS = "id_hash, payload, version, created_at, touched_at, expires_at, handle, user_hash, client"

# Filled in by fill_others: {t} the table, {columns}, {prefix} the handles' prefix, {first}
# and {last} the chunk's row numbers; :now and :expires are epoch seconds.
FILL_SQL = {
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM n WHERE i < {last}) "
        "INSERT INTO {t} ({columns}) "
        "SELECT lower(hex(randomblob(32))), randomblob(250), 1, :now, :now, :expires, "
        "'{prefix}' || i, lower(hex(randomblob(32))), randomblob(120) FROM n"
    ),
    "postgresql": (
        "INSERT INTO {t} ({columns}) "
        "SELECT md5(i::text) || md5(random()::text), "
        "decode(repeat(md5(i::text), 16), 'hex'), 1, :now, :now, :expires, "
        "'{prefix}' || i, md5(random()::text) || md5(random()::text), "
        "decode(repeat(md5(random()::text), 8), 'hex') "
        "FROM generate_series({first}, {last}) AS i"
    ),
}
# The user's rows, copied once, and put back before each revoke run.
COPY_SQL = "CREATE TABLE {copy} AS SELECT * FROM {table} WHERE handle NOT LIKE '{prefix}%'"
RESTORE_SQL = "INSERT INTO {table} SELECT * FROM {copy}"


def make_app(url: str, table: str) -> Quart:
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY="bench-secret-key-0123456789abcdef",  # noqa: S106 - throwaway data
        SESSION_DB_URL=url,
        SESSION_TABLE=table,
        SESSION_PRUNE_INTERVAL=0,
        SESSION_COOKIE_SECURE=True,  # quiets the start-up warning; no cookie is sent back
    )
    Session(app)

    @app.post("/login")
    async def login() -> str:
        session["user_id"] = USER  # SESSION_USER_KEY's default: binds the session
        return "ok"

    return app


async def fill_others(app: Quart, backend: str, rows: int, limit: float) -> float:
    """Write ``rows`` rows of other users in chunks; give up past ``limit`` seconds."""
    ext: Session = app.extensions["quartsess"]
    store = ext.store_for(app)
    now = int(time.time())
    params = {"now": now, "expires": now + 30 * 86_400}
    started = time.perf_counter()
    for first in range(1, rows + 1, CHUNK_ROWS):
        last = min(rows, first + CHUNK_ROWS - 1)
        sql = FILL_SQL[backend].format(
            t=store.table.name,
            columns=COLUMNS,
            prefix=OTHER_HANDLE_PREFIX,
            first=first,
            last=last,
        )

        def work(connection: Connection, sql: str = sql) -> None:
            connection.execute(text(sql), params)

        await store.run(work)
        elapsed = time.perf_counter() - started
        if last < rows and elapsed > limit:
            raise SystemExit(f"filling stopped after {last} rows in {elapsed:.0f} s (limit)")
    return time.perf_counter() - started


async def log_in_devices(app: Quart, count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        client = app.test_client()
        response = await client.post(
            "/login",
            headers={"User-Agent": USER_AGENTS[index % len(USER_AGENTS)]},
            scope_base={"client": (f"198.51.100.{index % 250 + 1}", 50_000)},
        )
        if response.status_code != 200:
            raise RuntimeError(f"login failed: {response.status_code}")
    return time.perf_counter() - started


async def timed(runs: int, action: Callable[[], Awaitable[object]]) -> list[float]:
    """Milliseconds of each of ``runs`` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(name: str, times: list[float]) -> str:
    return (
        f"{name:<22} median {statistics.median(times):8.1f} ms   "
        f"min {min(times):8.1f}   max {max(times):8.1f}   ({len(times)} runs)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backend", choices=sorted(FILL_SQL), default="sqlite")
    parser.add_argument("--url", help="database URL (default: the test server / a temp file)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the table")
    parser.add_argument("--user-sessions", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--fill-timeout", type=float, default=300.0, help="seconds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or URLS.get(args.backend) or f"sqlite+aiosqlite:///{tmp}/bench.sqlite3"
        table = f"qs_bench_users_{uuid.uuid4().hex[:8]}"
        copy = f"{table}_copy"
        app = make_app(url, table)
        ext: Session = app.extensions["quartsess"]
        store = ext.store_for(app)

        async def execute(sql: str) -> None:
            def work(connection: Connection) -> None:
                connection.execute(text(sql))

            await store.run(work)

        async with app.test_app():
            try:
                others = args.rows - args.user_sessions
                seconds = await fill_others(app, args.backend, others, args.fill_timeout)
                print(f"{args.backend}: {others:,} rows of other users written in {seconds:.1f} s")
                seconds = await log_in_devices(app, args.user_sessions)
                print(f"{args.user_sessions:,} sessions of {USER!r} logged in in {seconds:.1f} s")
                await execute(COPY_SQL.format(copy=copy, table=table, prefix=OTHER_HANDLE_PREFIX))
                await execute(f"ANALYZE {table}")

                async def listing() -> None:
                    found = await ext.user_sessions(USER, app=app)
                    if len(found) != args.user_sessions:
                        raise RuntimeError(f"listed {len(found)} sessions")

                await listing()  # warm-up: statement caches, the first decryption
                listed = await timed(args.runs, listing)
                # The store's query alone (rows without payloads, nothing decrypted).
                hashes = ext.parts_for(app).owners.user_hashes(USER)
                selected = await timed(args.runs, lambda: store.sessions_of(hashes))

                revoked: list[float] = []
                for run in range(args.runs):
                    if run:  # the rows the previous run deleted, back as they were
                        await execute(RESTORE_SQL.format(table=table, copy=copy))
                    started = time.perf_counter()
                    count = await ext.revoke_user_sessions(USER, app=app)
                    revoked.append((time.perf_counter() - started) * 1000)
                    if count != args.user_sessions:
                        raise RuntimeError(f"revoked {count} sessions")
                if await ext.user_sessions(USER, app=app):
                    raise RuntimeError("sessions left after revoking them all")

                print(f"table: {args.rows:,} rows; user: {args.user_sessions:,} sessions")
                print(summary("user_sessions", listed))
                print(summary("  of which the SELECT", selected))
                print(summary("revoke_user_sessions", revoked))
            finally:
                await execute(f"DROP TABLE IF EXISTS {copy}")
                await execute(f"DROP TABLE IF EXISTS {table}")


if __name__ == "__main__":
    asyncio.run(main())
