"""The app ``bench.live`` serves: logins, revocations and an idle websocket.

    BENCH_DB_URL=... BENCH_CHECK_INTERVAL=1 hypercorn 'bench.liveapp:create_app()'

``BENCH_CHECK_INTERVAL`` is ``SESSION_WEBSOCKET_CHECK_INTERVAL`` ("off": None).
"""

from __future__ import annotations

import os
from typing import Any

from quart import Quart, websocket

from quartsess import Session, session


def create_app() -> Quart:
    app = Quart(__name__)
    interval = os.environ.get("BENCH_CHECK_INTERVAL", "1")
    app.config.update(
        SECRET_KEY="bench-secret-key-not-for-production-0123456789",  # noqa: S106
        SESSION_DB_URL=os.environ["BENCH_DB_URL"],
        SESSION_TABLE=os.environ.get("BENCH_TABLE", "quartsess_bench_live"),
        SESSION_PRUNE_INTERVAL=0,
        SESSION_WEBSOCKET_CHECK_INTERVAL=None if interval == "off" else float(interval),
    )
    extension = Session(app)

    @app.get("/ping")
    async def ping() -> str:
        return "ok"

    @app.get("/pid")
    async def pid() -> dict[str, Any]:
        return {"pid": os.getpid()}

    @app.post("/login/<user>")
    async def login(user: str) -> str:
        session["user_id"] = user
        return "ok"

    @app.post("/revoke/<user>")
    async def revoke(user: str) -> dict[str, int]:
        return {"revoked": await extension.revoke_user_sessions(user)}

    @app.websocket("/ws")
    async def idle() -> None:
        await websocket.accept()
        while True:
            await websocket.send(await websocket.receive())

    return app
