"""An app for the ``@exclusive`` tests under real hypercorn: a cart with and without
``@exclusive``, a counter, a route that raises and one that blocks.

Configured from the environment so that every worker shares the settings:
``QUARTSESS_SECRET_KEY``, ``QUARTSESS_DB_URL``, ``QUARTSESS_TABLE``,
``QUARTSESS_EXCLUSIVE_TIMEOUT`` (seconds).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from quart import Quart

from quartsess import Session, exclusive, session


def create_app() -> Quart:
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=os.environ["QUARTSESS_SECRET_KEY"],
        SESSION_DB_URL=os.environ["QUARTSESS_DB_URL"],
        SESSION_TABLE=os.environ.get("QUARTSESS_TABLE", "quart_sessions"),
        SESSION_COOKIE_SECURE=False,
        SESSION_PRUNE_INTERVAL=0,
        SESSION_EXCLUSIVE_TIMEOUT=float(os.environ.get("QUARTSESS_EXCLUSIVE_TIMEOUT", "10")),
    )
    Session(app)

    @app.get("/health")
    async def health() -> str:
        return "ok"

    @app.get("/state")
    async def state() -> dict[str, Any]:
        return {"pid": os.getpid(), **dict(session.items())}

    @app.post("/start")
    async def start() -> dict[str, Any]:
        session["cart"] = {}
        return {"pid": os.getpid()}

    @app.post("/add/<product>")
    async def add(product: str) -> dict[str, Any]:
        """Not exclusive: a merge keeps every product, a count may be lost."""
        cart = session["cart"]
        cart[product] = cart.get(product, 0) + 1
        await asyncio.sleep(0.01)  # as a real view's work would, so requests overlap
        return {"pid": os.getpid()}

    @app.post("/exclusive/add/<product>")
    @exclusive
    async def add_exclusive(product: str) -> dict[str, Any]:
        cart = session["cart"]
        cart[product] = cart.get(product, 0) + 1
        await asyncio.sleep(0.01)
        return {"pid": os.getpid()}

    @app.post("/exclusive/fail")
    @exclusive
    async def fail() -> str:
        raise RuntimeError("a view that fails")

    @app.post("/exclusive/block/<int:seconds>")
    @exclusive
    async def block(seconds: int) -> dict[str, Any]:
        session["blocked"] = True
        print(f"holding in {os.getpid()}", flush=True)
        await asyncio.sleep(seconds)
        return {"pid": os.getpid()}

    return app
