"""An app for the websocket-enforcement tests under real hypercorn: login, logout,
revocation and an echo websocket that names the worker and the session's user.

Configured from the environment so that every worker shares the settings:
``QUARTSESS_SECRET_KEY``, ``QUARTSESS_DB_URL``, ``QUARTSESS_TABLE``,
``QUARTSESS_CHECK_INTERVAL`` (seconds), ``QUARTSESS_ABSOLUTE_TIMEOUT`` (seconds, optional),
``QUARTSESS_HEADER_NAME`` (optional).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from quart import Quart, websocket

from quartsess import Session, session


def create_app() -> Quart:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = Quart(__name__)
    absolute = os.environ.get("QUARTSESS_ABSOLUTE_TIMEOUT")
    app.config.update(
        SECRET_KEY=os.environ["QUARTSESS_SECRET_KEY"],
        SESSION_DB_URL=os.environ["QUARTSESS_DB_URL"],
        SESSION_TABLE=os.environ.get("QUARTSESS_TABLE", "quart_sessions"),
        SESSION_COOKIE_SECURE=False,
        SESSION_PRUNE_INTERVAL=0,
        SESSION_WEBSOCKET_CHECK_INTERVAL=float(os.environ.get("QUARTSESS_CHECK_INTERVAL", "1")),
        SESSION_ABSOLUTE_TIMEOUT=None if absolute is None else float(absolute),
        SESSION_HEADER_NAME=os.environ.get("QUARTSESS_HEADER_NAME"),
    )
    extension = Session(app)

    @app.get("/health")
    async def health() -> str:
        return "ok"

    @app.get("/pid")
    async def pid() -> dict[str, Any]:
        return {"pid": os.getpid(), "user": session.get("user_id")}

    @app.post("/login/<user>")
    async def login(user: str) -> dict[str, Any]:
        session["user_id"] = user
        return {"pid": os.getpid()}

    @app.post("/logout")
    async def logout() -> dict[str, Any]:
        session.clear()
        return {"pid": os.getpid()}

    @app.post("/revoke/<user>")
    async def revoke(user: str) -> dict[str, Any]:
        return {"pid": os.getpid(), "revoked": await extension.revoke_user_sessions(user)}

    @app.websocket("/ws")
    async def echo() -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            reply = {"pid": os.getpid(), "user": session.get("user_id"), "message": message}
            await websocket.send(json.dumps(reply))

    return app
