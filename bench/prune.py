"""Pruning a large table of expired sessions while the app serves requests.

    .venv/bin/python bench/prune.py --backend sqlite
    .venv/bin/python bench/prune.py --backend postgresql [--url postgresql+asyncpg://...]
    .venv/bin/python bench/prune.py --backend mariadb

Fills a fresh sessions table with ``--rows`` expired rows (default one million, 250-byte
payloads, random ID hashes, deadlines rising with insertion order as real sessions' do)
plus the live sessions of ``--clients`` visitors, then, in one process with
Quart's test client (one worker, as under hypercorn):

0. warm-up: ``--warmup`` seconds of load, not counted (lets the database settle after
   the bulk insert: SQLite's WAL checkpoint, PostgreSQL's autovacuum/analyze);
1. baseline: requests at ``--rate`` per second for ``--baseline`` seconds, no prune;
2. prune: ``await app.extensions["quartsess"].prune()`` while the same request load runs;
3. after: the baseline again, now on the pruned table.

Each request reads and writes its visitor's session (a visit counter). Latency is measured
from each request's scheduled start (open loop, so a stalled request delays the figures
instead of hiding the stall). Prints rows/s of the prune and p50/p99/max latency of both
phases.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

from quart import Quart, session
from sqlalchemy import event, text
from sqlalchemy.engine import Connection

from quartsess import Session

URLS = {
    "postgresql": os.environ.get(
        "QUARTSESS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get(
        "QUARTSESS_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"
    ),
}
PAYLOAD_BYTES = 250
EXPIRED_AT = 1_000  # epoch seconds: long past

FILL_SQL = {
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows) "
        "INSERT INTO {t} (id_hash, payload, version, created_at, touched_at, expires_at) "
        "SELECT lower(hex(randomblob(32))), randomblob({size}), 1, 0, 0, {expired} + i / 1000 "
        "FROM n"
    ),
    "postgresql": (
        "INSERT INTO {t} (id_hash, payload, version, created_at, touched_at, expires_at) "
        "SELECT md5(random()::text) || md5(random()::text), "
        "decode(repeat(md5(i::text), {size} / 16 + 1), 'hex'), 1, 0, 0, {expired} + i / 1000 "
        "FROM generate_series(1, :rows) AS i"
    ),
    "mariadb": (
        "INSERT INTO {t} (id_hash, payload, version, created_at, touched_at, expires_at) "
        "SELECT SHA2(CONCAT(seq, RAND()), 256), UNHEX(REPEAT(MD5(seq), {size} DIV 16 + 1)), "
        "1, 0, 0, {expired} + seq DIV 1000 FROM seq_1_to_{rows}"
    ),
}


def make_app(url: str, table: str) -> Quart:
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY="bench-secret-key-0123456789abcdef",  # noqa: S106 - throwaway data
        SESSION_DB_URL=url,
        SESSION_TABLE=table,
        SESSION_PRUNE_INTERVAL=0,  # the benchmark starts the prune itself
    )
    Session(app)

    @app.get("/visit")
    async def visit() -> str:
        session["visits"] = session.get("visits", 0) + 1
        return str(session["visits"])

    return app


async def fill(app: Quart, backend: str, rows: int) -> float:
    ext: Session = app.extensions["quartsess"]
    store = ext.store_for(app)
    sql = FILL_SQL[backend].format(
        t=store.table.name, size=PAYLOAD_BYTES, expired=EXPIRED_AT, rows=int(rows)
    )
    started = time.perf_counter()

    def work(connection: Connection) -> None:
        connection.execute(text(sql), {"rows": rows})

    await store.run(work)
    if backend == "postgresql":
        await store.run(lambda c: c.execute(text(f"ANALYZE {store.table.name}")))
    return time.perf_counter() - started


async def load(clients: list[Any], rate: float, stop: asyncio.Event | float) -> list[float]:
    """Requests at ``rate``/s, round robin over ``clients``, until ``stop`` (an event, or
    a duration in seconds); returns latencies in ms from each scheduled start."""
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()
    interval = 1.0 / rate
    begin = time.perf_counter()

    async def one(client: Any, scheduled: float) -> None:
        response = await client.get("/visit")
        if response.status_code != 200:
            raise RuntimeError(f"request failed: {response.status_code}")
        latencies.append((time.perf_counter() - scheduled) * 1000)

    index = 0
    while True:
        scheduled = begin + index * interval
        if isinstance(stop, float):
            if scheduled - begin >= stop:
                break
        elif stop.is_set():
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(clients[index % len(clients)], scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
        index += 1
    if pending:
        await asyncio.gather(*pending)
    return latencies


def summary(name: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    return (
        f"{name:<14} requests={len(ordered):>6}  p50={statistics.median(ordered):7.2f} ms  "
        f"p90={pct(0.9):7.2f} ms  p99={pct(0.99):7.2f} ms  max={ordered[-1]:7.2f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "mariadb"], default="sqlite")
    parser.add_argument("--url", help="database URL (default: the test servers / a temp file)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of baseline load")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of uncounted load")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rest", type=float, default=None, help="pruner rest/batch time ratio")
    parser.add_argument(
        "--sqlite-cache-mb", type=int, default=None, help="PRAGMA cache_size (default: 2 MB)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or URLS.get(args.backend) or f"sqlite+aiosqlite:///{tmp}/bench.sqlite3"
        table = f"qs_bench_{uuid.uuid4().hex[:8]}"
        app = make_app(url, table)
        ext: Session = app.extensions["quartsess"]
        pruner = ext.pruner_for(app)
        if args.batch_size:
            pruner.batch_size = args.batch_size
        if args.rest is not None:
            pruner.rest = args.rest
        if args.sqlite_cache_mb and args.backend == "sqlite":
            pragma = f"PRAGMA cache_size = -{args.sqlite_cache_mb * 1024}"

            def set_cache(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute(pragma)
                cursor.close()

            event.listen(ext.store_for(app).sync_engine, "connect", set_cache)
        async with app.test_app() as test_app:
            try:
                seconds = await fill(app, args.backend, args.rows)
                print(f"{args.backend}: {args.rows} expired rows written in {seconds:.1f} s")
                clients = [test_app.test_client() for _ in range(args.clients)]
                for client in clients:  # live sessions, also warms up the code paths
                    await client.get("/visit")

                await load(clients, args.rate, float(args.warmup))
                baseline = await load(clients, args.rate, float(args.baseline))

                done = asyncio.Event()

                async def prune() -> tuple[int, float]:
                    started = time.perf_counter()
                    try:
                        return await ext.prune(app), time.perf_counter() - started
                    finally:
                        done.set()

                prune_task = asyncio.create_task(prune())
                during = await load(clients, args.rate, done)
                deleted, elapsed = await prune_task
                after = await load(clients, args.rate, float(args.baseline))
                left = (await ext.store_for(app).stats(int(time.time()))).rows

                print(
                    f"prune: {deleted} rows in {elapsed:.1f} s = {deleted / elapsed:,.0f} rows/s "
                    f"(batch {pruner.batch_size}, rest {pruner.rest}); "
                    f"rows left: {left} (live sessions)"
                )
                print(summary("no prune", baseline))
                print(summary("during prune", during))
                print(summary("after prune", after))
                p99 = (
                    sorted(during)[int(len(during) * 0.99)]
                    / sorted(baseline)[int(len(baseline) * 0.99)]
                )
                print(f"p99 during prune / p99 without: {p99:.2f}x")
            finally:
                store = ext.store_for(app)
                await store.run(lambda c: c.execute(text(f"DROP TABLE IF EXISTS {table}")))


if __name__ == "__main__":
    asyncio.run(main())
