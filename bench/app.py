"""The app the HTTP benchmark serves: the same three routes for every target.

    BENCH_TARGET=none|cookie|sqlite|postgresql hypercorn 'bench.app:create_app()'

- ``/new``: a new visitor; stores a small session (what a login or first visit stores).
- ``/rmw``: a returning visitor's visit counter (read, modify, write).
- ``/read``: a returning visitor's page that only reads the session.

``none`` serves the same routes without touching any session (the ceiling); ``cookie``
is Quart's built-in signed-cookie session; ``sqlite`` and ``postgresql`` are quartsess
(``BENCH_DB_URL``, ``BENCH_TABLE``). ``BENCH_GC_FREEZE=1`` calls ``gc.freeze()`` once
serving starts (``bench.run`` does so for every target unless ``--no-gc-freeze``);
``BENCH_GC_STATS=1`` prints the garbage collector's full collections and totals.
"""

from __future__ import annotations

import gc
import os
import random
import time

from quart import Quart, session

TARGETS = ("none", "cookie", "sqlite", "postgresql")


def create_app() -> Quart:
    target = os.environ.get("BENCH_TARGET", "cookie")
    if target not in TARGETS:
        raise SystemExit(f"BENCH_TARGET must be one of {', '.join(TARGETS)}")
    app = Quart(__name__)
    app.secret_key = "bench-secret-key-not-for-production-0123456789"  # noqa: S105
    if target in ("sqlite", "postgresql"):
        from quartsess import Session

        app.config["SESSION_DB_URL"] = os.environ["BENCH_DB_URL"]
        app.config["SESSION_TABLE"] = os.environ.get("BENCH_TABLE", "quartsess_bench")
        Session(app)
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

    if os.environ.get("BENCH_GC_FREEZE"):

        @app.before_serving
        async def freeze() -> None:
            # Start-up objects (modules, the app, SQLAlchemy's metadata) out of the way
            # of every later full collection.
            gc.collect()
            gc.freeze()

    if os.environ.get("BENCH_GC_STATS"):
        _report_gc(app, target)
    return app


def _report_gc(app: Quart, target: str) -> None:
    """Print every full collection of the garbage collector, and per-generation totals
    every 500 collections (a diagnostic: ``BENCH_GC_STATS=1``)."""
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

    gc.callbacks.append(callback)
