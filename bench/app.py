"""The app the HTTP benchmark serves: the same three routes for every target.

    BENCH_TARGET=none|cookie|sqlite|postgresql|postgresql-socket|floor-sqlite|floor-postgresql \
        hypercorn 'bench.app:create_app()'

- ``/new``: a new visitor; stores a small session (what a login or first visit stores).
- ``/rmw``: a returning visitor's visit counter (read, modify, write).
- ``/read``: a returning visitor's page that only reads the session.

``none`` serves the same routes without touching any session (the ceiling); ``cookie``
is Quart's built-in signed-cookie session; ``sqlite``, ``postgresql`` and
``postgresql-socket`` (the same app; ``bench.run`` gives it a Unix-socket URL) are quartsess
(``BENCH_DB_URL``, ``BENCH_TABLE``); ``floor-sqlite`` and ``floor-postgresql`` are the bare
SQL session store of ``bench/floor.py`` on the same databases (``BENCH_DB_URL``): the floor.
``BENCH_GC_FREEZE=1`` calls ``gc.freeze()`` once
serving starts (``bench.run --gc-freeze``; off by default). ``BENCH_GC_STATS=1`` (which
``bench.run`` sets for every target) prints, once serving starts and after a
``gc.collect()``, the number of objects the garbage collector tracks ("gc TARGET: tracked
objects N"), then every full collection ("gc TARGET: full collection X ms") and
per-generation totals every 500 collections.
"""

from __future__ import annotations

import gc
import os
import random
import time
from collections.abc import Callable

from quart import Quart, session

TARGETS = (
    "none",
    "cookie",
    "sqlite",
    "postgresql",
    "postgresql-socket",
    "floor-sqlite",
    "floor-postgresql",
)


def create_app() -> Quart:
    target = os.environ.get("BENCH_TARGET", "cookie")
    if target not in TARGETS:
        raise SystemExit(f"BENCH_TARGET must be one of {', '.join(TARGETS)}")
    app = Quart(__name__)
    app.secret_key = "bench-secret-key-not-for-production-0123456789"  # noqa: S105
    if target in ("sqlite", "postgresql", "postgresql-socket"):
        from quartsess import Session

        app.config["SESSION_DB_URL"] = os.environ["BENCH_DB_URL"]
        app.config["SESSION_TABLE"] = os.environ.get("BENCH_TABLE", "quartsess_bench")
        Session(app)
    elif target.startswith("floor-"):
        from bench.floor import install

        install(app, os.environ["BENCH_DB_URL"])
    uses_session = target != "none"

    @app.get("/new")
    async def new_visitor() -> str:
        user = random.randrange(1_000_000)
        if uses_session:
            session["user_id"] = user
            session["name"] = f"visitor {user}"
            session["visits"] = 1
        return f"welcome, visitor {user}"

    @app.get("/rmw")
    async def visit_counter() -> str:
        visits = 1
        if uses_session:
            visits = session.get("visits", 0) + 1
            session["visits"] = visits
        return f"visit number {visits}"

    @app.get("/read")
    async def read_only() -> str:
        name = "visitor"
        if uses_session:
            name = session.get("name", "stranger")
        return f"hello, {name}"

    @app.get("/ping")
    async def ping() -> str:
        return "ok"

    gc_stats = bool(os.environ.get("BENCH_GC_STATS"))
    gc_freeze = bool(os.environ.get("BENCH_GC_FREEZE"))
    if gc_stats or gc_freeze:

        @app.before_serving
        async def settle_heap() -> None:
            # Runs after quartsess's own start-up hook (registered first), so the count
            # includes the engine and its pool.
            gc.collect()
            if gc_stats:
                # Counted before any gc.freeze(): frozen objects are not listed.
                print(f"gc {target}: tracked objects {len(gc.get_objects())}", flush=True)
            if gc_freeze:
                # Start-up objects (modules, the app, SQLAlchemy's metadata) out of the way
                # of every later full collection.
                gc.freeze()
            if gc_stats:
                # Only from now on: the collection above is start-up, not load.
                gc.callbacks.append(_gc_callback(target))

    return app


def _gc_callback(target: str) -> Callable[[str, dict[str, int]], None]:
    """A ``gc.callbacks`` entry that prints every full collection of the garbage collector,
    and per-generation totals every 500 collections (a diagnostic: ``BENCH_GC_STATS=1``).
    It prints from within the collector, on generation-2 collections only (and the
    totals every 500th), never once per request."""
    started: list[float] = []
    totals = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
            return
        if not started:
            return
        took = time.perf_counter() - started.pop()
        generation = info["generation"]
        totals[generation][0] += 1
        totals[generation][1] += took
        if generation == 2:
            print(f"gc {target}: full collection {took * 1e3:.1f} ms", flush=True)
        if sum(count for count, _ in totals.values()) % 500 == 0:
            summary = ", ".join(
                f"gen {g}: {int(c)} runs {t * 1e3:.1f} ms" for g, (c, t) in totals.items()
            )
            print(f"gc {target}: {summary}", flush=True)

    return callback
