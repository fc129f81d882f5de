"""Home, dashboard and the visit counter (over HTTP and over a websocket)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, ResponseReturnValue, render_template, request, websocket

from quartsess import exclusive, session

from .auth import current_user, login_required
from .cart import cart_count
from .csrf import is_valid_token

bp = Blueprint("main", __name__)


def visit_count() -> int:
    """How many visits the session has counted (reading only)."""
    visits = session.get("visits", 0)
    return visits if isinstance(visits, int) else 0


def count_visit() -> int:
    """Count one more visit and return the new total."""
    session["visits"] = visit_count() + 1
    return visit_count()


@bp.get("/")
async def index() -> ResponseReturnValue:
    """Whether you are logged in and your visit count; a read-only page."""
    return await render_template(
        "index.html",
        visits=visit_count(),
        cart_items=cart_count(),
        logged_out=request.args.get("logged_out") == "1",
    )


@bp.get("/dashboard")
@login_required
async def dashboard() -> ResponseReturnValue:
    """Only for logged-in users."""
    return await render_template(
        "dashboard.html", user=current_user(), visits=visit_count(), cart_items=cart_count()
    )


@bp.get("/visits")
@exclusive
async def visits() -> ResponseReturnValue:
    """Each view counts a visit (one at a time: two tabs loading it at once both count);
    the page's script can count more over a websocket."""
    return await render_template("visits.html", visits=count_visit())


@bp.websocket("/ws/visits")
async def visits_socket() -> ResponseReturnValue | None:
    """Count visits live: each ``{"action": "visit", "csrf_token": ...}`` message adds one,
    ``{"action": "read", ...}`` reads the count, on one connection kept open.

    The handler changes the session after the handshake, when no cookie can be sent;
    ``session.save()`` stores each change at once (the handler only returns when the
    client goes). When this device's session ends elsewhere (logged out from another
    device, or past its deadline), quartsess closes the socket with code 1008."""
    if not _same_origin():
        return "Cross-origin websocket refused.", 403
    await websocket.accept()
    while True:
        message = _parse(await websocket.receive())
        if message.get("action") not in {"visit", "read"}:
            await websocket.send_json({"error": "unknown action"})
        elif not is_valid_token(message.get("csrf_token")):
            # The token needs the browser's CSRF cookie, which the handshake brings along.
            await websocket.send_json({"error": "missing or wrong csrf_token"})
        elif message["action"] == "visit":
            count = count_visit()
            if session.sid is not None:
                await session.save()
            await websocket.send_json({"visits": count})
        else:
            await websocket.send_json({"visits": visit_count()})


def _same_origin() -> bool:
    # Browsers send cookies with cross-site websocket handshakes too: check Origin, the
    # scheme included (a page on http://host is not https://host's, nor the other way).
    origin = websocket.headers.get("Origin")
    if origin is None:
        return False
    parts = urlsplit(origin)
    expected_scheme = "https" if websocket.scheme == "wss" else "http"
    return parts.scheme == expected_scheme and parts.netloc == websocket.host


def _parse(raw: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}
