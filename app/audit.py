"""The audit log: every session that starts, changes hands or ends, from quartsess's
signals, on the ``app.audit`` logger. A handle prefix names the session (never its ID)."""

from __future__ import annotations

import logging
from typing import Any

from quart import Quart, has_request_context, has_websocket_context, request, websocket

from quartsess import signals

logger = logging.getLogger("app.audit")

#: Characters of a handle in a log line: enough to tell sessions apart, and to find the
#: device on the "Your sessions" page, where handles are in the page's markup.
HANDLE_PREFIX = 8
#: At most this many characters of a client-supplied value go into a log line.
MAX_LOGGED = 120


def install(app: Quart) -> None:
    """Log every lifecycle signal ``app`` sends."""
    signals.session_created.connect(_created, sender=app, weak=False)
    signals.session_user_changed.connect(_user_changed, sender=app, weak=False)
    signals.session_ended.connect(_ended, sender=app, weak=False)
    signals.sessions_pruned.connect(_pruned, sender=app, weak=False)


def _created(sender: Quart, *, handle: str, user: str | None, **_: Any) -> None:
    logger.info("session %s created, user %s, %s", _short(handle), _user(user), _device())


def _user_changed(
    sender: Quart, *, handle: str, user: str | None, previous_user: str | None, **_: Any
) -> None:
    logger.info(
        "session %s changed user %s -> %s, %s",
        _short(handle),
        _user(previous_user),
        _user(user),
        _device(),
    )


def _ended(sender: Quart, *, handle: str, user: str | None, reason: str, **_: Any) -> None:
    logger.info(
        "session %s of user %s ended: %s, %s", _short(handle), _user(user), reason, _device()
    )


def _pruned(sender: Quart, *, count: int, **_: Any) -> None:
    logger.info("%d expired sessions pruned", count)


def _short(handle: str) -> str:
    return handle[:HANDLE_PREFIX]


def _user(user: str | None) -> str:
    return "-" if user is None else repr(user[:MAX_LOGGED])


def _device() -> str:
    """The device of the request that made the change, if a request made it."""
    if has_request_context():
        headers, address = request.headers, request.remote_addr
    elif has_websocket_context():
        headers, address = websocket.headers, websocket.remote_addr
    else:
        return "by the server"
    from .devices import describe_user_agent

    user_agent = (headers.get("User-Agent") or "")[:512]
    browser, system = describe_user_agent(user_agent or None)
    return f"from {browser} on {system} at {(address or 'unknown')[:MAX_LOGGED]}"
