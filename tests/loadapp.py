"""A JSON app for load and fault tests: counter, cart, login and logout, as users do them.

Configured from the environment so that every hypercorn worker shares the settings:
``QUARTSESS_SECRET_KEY``, ``QUARTSESS_DB_URL``, ``QUARTSESS_TABLE``.
"""

from __future__ import annotations

import os
from typing import Any

from quart import Quart

from quartsess import Session, session


def create_app() -> Quart:
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=os.environ["QUARTSESS_SECRET_KEY"],
        SESSION_DB_URL=os.environ["QUARTSESS_DB_URL"],
        SESSION_TABLE=os.environ.get("QUARTSESS_TABLE", "quart_sessions"),
        SESSION_COOKIE_SECURE=False,
        SESSION_PRUNE_INTERVAL=float(os.environ.get("QUARTSESS_PRUNE_INTERVAL", "30")),
    )
    Session(app)

    @app.get("/health")
    async def health() -> str:
        return "ok"

    @app.get("/state")
    async def state() -> dict[str, Any]:
        return dict(session.items())

    @app.post("/visit")
    async def visit() -> dict[str, Any]:
        session["visits"] = session.get("visits", 0) + 1
        return {"visits": session["visits"]}

    @app.post("/cart/<item>/add")
    async def add(item: str) -> dict[str, Any]:
        cart = session.setdefault("cart", {})
        cart[item] = cart.get(item, 0) + 1
        return {"cart": cart}

    @app.post("/cart/<item>/remove")
    async def remove(item: str) -> dict[str, Any]:
        cart = session.setdefault("cart", {})
        cart.pop(item, None)
        return {"cart": cart}

    @app.post("/login/<user>")
    async def login(user: str) -> dict[str, Any]:
        session.regenerate()
        session["user"] = user
        return {"user": user}

    @app.post("/logout")
    async def logout() -> dict[str, Any]:
        session.clear()
        return {}

    return app
