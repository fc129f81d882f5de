"""The session layer alone: open + save through the session interface, no HTTP.

    .venv/bin/python -m bench.micro [--backends sqlite postgresql mariadb] [--quick]
                                    [--no-app-engine]

For each backend (and Quart's own cookie interface for reference), and again for each
on the app's own engine (``Session(app, engine=create_async_engine(url))``: every
statement through SQLAlchemy and that engine's pool), per pattern:
returning read-only (open, read a key, save: no write), read-modify-write (open, bump a
counter, save: one UPDATE) and new visitor (no cookie, store three keys: one INSERT).
Sequential, one request at a time, on one event loop: microseconds per request, the
median of several batches. Then the parts: hashing the ID, one load statement, decrypting,
serializing, encrypting, and the same SELECT run through each way of reaching the
database (the raw driver, a pool, SQLAlchemy's async engine), which is why
``quartsess/stores/`` drives each database the way it does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from quart import Quart, Response
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quartsess import Session
from quartsess.ids import hash_session_id
from quartsess.interface import ServerSessionInterface

URLS = {
    "postgresql": os.environ.get(
        "QUARTSESS_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get(
        "QUARTSESS_BENCH_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"
    ),
}
TABLE = "quartsess_micro"
SESSIONS = 1000

Op = Callable[[int], Awaitable[Any]]


async def timed(op: Op, n: int, batches: int) -> float:
    """Median over ``batches`` of the mean microseconds per call of ``op(i)``, i < n."""
    for i in range(min(n, 200)):  # warm-up
        await op(i)
    results = []
    for _ in range(batches):
        start = time.perf_counter()
        for i in range(n):
            await op(i)
        results.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(results)


def make_app(backend: str, workdir: Path, app_engine: AsyncEngine | None = None) -> Quart:
    app = Quart(__name__)
    app.secret_key = "micro-benchmark-secret-key-0123456789abcdef"  # noqa: S105
    if backend == "cookie":
        return app
    app.config.update(SESSION_TABLE=TABLE, SESSION_PRUNE_INTERVAL=0)
    if app_engine is None:
        app.config["SESSION_DB_URL"] = url_of(backend, workdir)
    Session(app, engine=app_engine)
    return app


def url_of(backend: str, workdir: Path) -> str:
    return URLS.get(backend) or f"sqlite+aiosqlite:///{workdir / 'micro.sqlite3'}"


def make_app_engine(backend: str, workdir: Path) -> AsyncEngine:
    """An app's engine as the deployment docs suggest: SQLAlchemy's defaults, and on
    SQLite the file in WAL mode with ``synchronous = NORMAL`` (as quartsess's own)."""
    engine = create_async_engine(url_of(backend, workdir))
    if backend == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def wal(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

    return engine


async def drop_table(backend: str) -> None:
    if backend not in URLS:
        return
    engine = create_async_engine(URLS[backend])
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
    finally:
        await engine.dispose()


async def bench_backend(
    backend: str, n: int, batches: int, workdir: Path, *, app_engine: bool = False
) -> dict[str, float]:
    await drop_table(backend)
    engine = make_app_engine(backend, workdir) if app_engine else None
    try:
        return await bench_app(make_app(backend, workdir, engine), n, batches)
    finally:
        if engine is not None:
            await engine.dispose()
        await drop_table(backend)


async def bench_app(app: Quart, n: int, batches: int) -> dict[str, float]:
    interface = app.session_interface
    results: dict[str, float] = {}
    async with app.app_context():
        for func in app.before_serving_funcs:
            await func()
        try:
            # Seed returning visitors and keep one prepared request per cookie.
            cookies = []
            for i in range(SESSIONS):
                async with app.test_request_context("/"):
                    from quart import request

                    session = await interface.open_session(app, request)
                    session.update(user_id=i, name=f"visitor {i}", visits=1)
                    response = Response("ok")
                    await interface.save_session(app, session, response)
                    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
                cookies.append(cookie)
            requests = []
            for cookie in cookies:
                async with app.test_request_context("/", headers={"Cookie": cookie}):
                    from quart import request

                    req = request._get_current_object()  # type: ignore[attr-defined]
                    req.cookies  # noqa: B018 - parse once, as Quart does per request
                    requests.append(req)
            async with app.test_request_context("/"):
                from quart import request

                fresh = request._get_current_object()  # type: ignore[attr-defined]
                fresh.cookies  # noqa: B018

            async def read_only(i: int) -> None:
                session = await interface.open_session(app, requests[i % SESSIONS])
                session.get("name")
                await interface.save_session(app, session, Response("ok"))

            async def rmw(i: int) -> None:
                session = await interface.open_session(app, requests[i % SESSIONS])
                session["visits"] = session.get("visits", 0) + 1
                await interface.save_session(app, session, Response("ok"))

            async def new(i: int) -> None:
                session = await interface.open_session(app, fresh)
                session.update(user_id=i, name=f"visitor {i}", visits=1)
                await interface.save_session(app, session, Response("ok"))

            results["open+save read-only"] = await timed(read_only, n, batches)
            results["open+save read-modify-write"] = await timed(rmw, n, batches)
            results["open+save new visitor"] = await timed(new, n, batches)
            if isinstance(interface, ServerSessionInterface):
                server_interface = interface
                # The same sessions named in a header (SESSION_HEADER_NAME, API clients).
                by_header = ServerSessionInterface(
                    interface.saver,
                    replace(interface.config, header_name="X-Session-Token"),
                    interface.live,
                    interface.holds,
                )
                header_requests = []
                for cookie in cookies:
                    sid = cookie.split("=", 1)[1]
                    async with app.test_request_context("/", headers={"X-Session-Token": sid}):
                        from quart import request

                        header_requests.append(request._get_current_object())  # type: ignore[attr-defined]

                async def read_only_header(i: int) -> None:
                    session = await by_header.open_session(app, header_requests[i % SESSIONS])
                    session.get("name")
                    await by_header.save_session(app, session, Response("ok"))

                results["open+save read-only, ID in a header"] = await timed(
                    read_only_header, n, batches
                )

                async def rmw_exclusive(i: int) -> None:
                    # What an @exclusive route adds: the lease taken, then released after
                    # the save (two statements).
                    session = await server_interface.open_session(app, requests[i % SESSIONS])
                    await server_interface.hold(session)
                    session["visits"] = session.get("visits", 0) + 1
                    await server_interface.save_session(app, session, Response("ok"))

                results["open+hold+save read-modify-write (@exclusive)"] = await timed(
                    rmw_exclusive, n, batches
                )
                results.update(await parts(interface, cookies, n, batches))
        finally:
            for func in app.after_serving_funcs:
                await func()
    return results


async def parts(
    interface: ServerSessionInterface, cookies: list[str], n: int, batches: int
) -> dict[str, float]:
    store, codec = interface.saver.store, interface.saver.codec
    hashes = [hash_session_id(c.split("=", 1)[1]) for c in cookies]
    rows = [await store.load(h) for h in hashes]
    plain = [codec.open(h, r.payload)[1] for h, r in zip(hashes, rows, strict=True) if r]
    data = [codec.deserialize(p) for p in plain]
    ids = [c.split("=", 1)[1] for c in cookies]

    async def hash_id(i: int) -> None:
        hash_session_id(ids[i % SESSIONS])

    async def load(i: int) -> None:
        await store.load(hashes[i % SESSIONS])

    async def decrypt(i: int) -> None:
        row = rows[i % SESSIONS]
        assert row is not None
        codec.forget(row.payload)  # what opening a ciphertext new to this process costs
        codec.open(row.id_hash, row.payload)

    async def open_kept(i: int) -> None:
        row = rows[i % SESSIONS]
        assert row is not None
        codec.open(row.id_hash, row.payload)  # this process wrote or opened it before

    async def serialize(i: int) -> None:
        codec.serialize(data[i % SESSIONS])

    async def encrypt(i: int) -> None:
        codec.seal(hashes[i % SESSIONS], plain[i % SESSIONS])

    return {
        "part: hash the cookie ID": await timed(hash_id, n, batches),
        "part: load statement": await timed(load, n, batches),
        "part: decrypt + deserialize": await timed(decrypt, n, batches),
        "part: open a ciphertext already kept": await timed(open_kept, n, batches),
        "part: serialize": await timed(serialize, n, batches),
        "part: encrypt": await timed(encrypt, n, batches),
    }


async def execution_paths(backend: str, n: int, batches: int, workdir: Path) -> dict[str, float]:
    """One primary-key SELECT of a ~200-byte row through each way of running it."""
    results: dict[str, float] = {}
    key = "k" * 64
    if backend == "sqlite":
        path = workdir / "paths.sqlite3"
        setup = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        setup.execute("PRAGMA journal_mode = WAL")
        setup.execute("CREATE TABLE IF NOT EXISTS t (id_hash TEXT PRIMARY KEY, payload BLOB)")
        setup.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (key, b"x" * 200))
        sql = "SELECT payload FROM t WHERE id_hash = ?"

        async def raw_sqlite3(_: int) -> None:
            setup.execute(sql, (key,)).fetchone()

        results["sqlite3 inline (quartsess)"] = await timed(raw_sqlite3, n, batches)
        loop = asyncio.get_running_loop()

        async def sqlite3_thread(_: int) -> None:
            await loop.run_in_executor(None, lambda: setup.execute(sql, (key,)).fetchone())

        results["sqlite3 in a thread (run_in_executor)"] = await timed(sqlite3_thread, n, batches)
        import aiosqlite

        async with aiosqlite.connect(path) as connection:

            async def raw_aiosqlite(_: int) -> None:
                async with connection.execute(sql, (key,)) as cursor:
                    await cursor.fetchone()

            results["aiosqlite, held connection"] = await timed(raw_aiosqlite, n, batches)
        url = f"sqlite+aiosqlite:///{path}"
    elif backend == "postgresql":
        import asyncpg  # type: ignore[import-untyped]

        dsn = URLS[backend].replace("postgresql+asyncpg://", "postgresql://", 1)
        connection = await asyncpg.connect(dsn)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS quartsess_paths (id_hash TEXT PRIMARY KEY, payload BYTEA)"
        )
        await connection.execute(
            "INSERT INTO quartsess_paths VALUES ($1, $2) ON CONFLICT DO NOTHING", key, b"x" * 200
        )
        sql = "SELECT payload FROM quartsess_paths WHERE id_hash = $1"

        async def held(_: int) -> None:
            await connection.fetchrow(sql, key)

        results["asyncpg, held connection"] = await timed(held, n, batches)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)

        async def pooled(_: int) -> None:
            async with pool.acquire() as c:
                await c.fetchrow(sql, key)

        results["asyncpg pool, default reset"] = await timed(pooled, n, batches)
        await pool.close()

        async def no_reset(_: Any) -> None:
            return None

        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10, reset=no_reset)
        results["asyncpg pool, reset disabled"] = await timed(pooled, n, batches)
        await pool.close()
        await connection.close()
        url = URLS[backend]
    else:
        url = URLS[backend]
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    table = "t" if backend == "sqlite" else "quartsess_paths"
    if backend == "mariadb":
        async with engine.connect() as connection:
            await connection.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS quartsess_paths "
                    "(id_hash VARCHAR(64) PRIMARY KEY, payload BLOB)"
                )
            )
            await connection.execute(
                text("REPLACE INTO quartsess_paths VALUES (:k, :p)"), {"k": key, "p": b"x" * 200}
            )
    statement = text(f"SELECT payload FROM {table} WHERE id_hash = :k")  # noqa: S608

    async def sqlalchemy_checkout(_: int) -> None:
        async with engine.connect() as connection:
            (await connection.execute(statement, {"k": key})).first()

    results["SQLAlchemy async: connect + execute + close"] = await timed(
        sqlalchemy_checkout, n, batches
    )
    async with engine.connect() as held_connection:

        async def sqlalchemy_held(_: int) -> None:
            (await held_connection.execute(statement, {"k": key})).first()

        results["SQLAlchemy async: held connection"] = await timed(sqlalchemy_held, n, batches)
    if backend != "sqlite":
        async with engine.connect() as connection:
            await connection.execute(text("DROP TABLE IF EXISTS quartsess_paths"))
    await engine.dispose()
    return results


async def main_async(args: argparse.Namespace) -> None:
    n, batches = (300, 3) if args.quick else (2000, 5)
    with tempfile.TemporaryDirectory(prefix="quartsess-micro-") as tmp:
        workdir = Path(tmp)
        targets = [("cookie", False)]
        for backend in args.backends:
            targets += (
                [(backend, False), (backend, True)] if args.app_engine else [(backend, False)]
            )
        for backend, app_engine in targets:
            label = f"{backend}, app's engine" if app_engine else backend
            try:
                results = await bench_backend(backend, n, batches, workdir, app_engine=app_engine)
                if backend != "cookie" and args.paths and not app_engine:
                    paths = await execution_paths(backend, n, batches, workdir)
                    results.update({f"path: {k}": v for k, v in paths.items()})
            except OSError as error:
                print(f"\n{label}: skipped ({error})")
                continue
            print(f"\n{label} (us per call, median of {batches} batches of {n})")
            for name, value in results.items():
                print(f"  {name:<52} {value:9.1f}")


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("quartsess").setLevel(logging.ERROR)  # no start-up advice here
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["sqlite", "postgresql", "mariadb"],
        default=["sqlite", "postgresql", "mariadb"],
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--no-paths", dest="paths", action="store_false", help="skip the execution-path table"
    )
    parser.add_argument(
        "--no-app-engine",
        dest="app_engine",
        action="store_false",
        help="skip the runs on the app's own engine (Session(app, engine=...))",
    )
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
