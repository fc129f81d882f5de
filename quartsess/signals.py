"""Signals of the sessions' lifecycle: blinker signals, as Quart's own, the app the sender.

- ``session_created(app, handle=..., user=...)``: a new session was stored (``user``: the
  user it was stored for, or ``None``). Once per handle: a login is not a new session.
- ``session_user_changed(app, handle=..., user=..., previous_user=...)``: a stored session
  became a user's (a login), changed user, or stopped being one (a logout that keeps
  the data). ``handle`` survives the new ID a login gives.
- ``session_ended(app, handle=..., user=..., reason=...)``: ``reason`` is ``"logout"``
  (``session.clear()``), ``"revoked"`` (``revoke_session``, ``revoke_user_sessions``,
  ``quart sessions revoke``), ``"capped"`` (``SESSION_MAX_PER_USER``) or ``"expired"``
  (a request or a websocket check found it past a deadline).
- ``sessions_pruned(app, count=...)``: the pruner deleted ``count`` expired rows that no
  request had found (one signal per batch, not per row: see the docs).

Each is sent once per change, by the process that made it, after the change was
committed. Receivers may be plain functions or coroutine functions, as Quart's own
signals' are (plain ones run through ``app.ensure_async``). A receiver that raises is
logged with its traceback and fails nothing: not the request, not the revocation, not
the pruner, nor the other receivers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from blinker import Namespace

from .lifecycle import (
    SessionCreated,
    SessionEnded,
    SessionsPruned,
    SessionUserChanged,
    Transition,
)

if TYPE_CHECKING:
    from blinker import NamedSignal
    from quart import Quart

    from .lifecycle import Listener

logger = logging.getLogger("quartsess")

_signals = Namespace()

session_created = _signals.signal("quartsess.session-created")
session_user_changed = _signals.signal("quartsess.session-user-changed")
session_ended = _signals.signal("quartsess.session-ended")
sessions_pruned = _signals.signal("quartsess.sessions-pruned")


def _signal_of(transition: Transition) -> tuple[NamedSignal, dict[str, Any]]:
    if isinstance(transition, SessionCreated):
        return session_created, {"handle": transition.handle, "user": transition.user}
    if isinstance(transition, SessionUserChanged):
        return session_user_changed, {
            "handle": transition.handle,
            "user": transition.user,
            "previous_user": transition.previous_user,
        }
    if isinstance(transition, SessionEnded):
        return session_ended, {
            "handle": transition.handle,
            "user": transition.user,
            "reason": transition.reason,
        }
    if isinstance(transition, SessionsPruned):
        return sessions_pruned, {"count": transition.count}
    raise TypeError(f"not a lifecycle transition: {transition!r}")  # pragma: no cover


def sender_for(app: Quart) -> Listener:
    """A lifecycle listener that sends each transition as its signal, with ``app`` as the
    sender, inside an app context (pushing one where there is none: the pruner, a
    ``quart sessions`` command)."""

    async def send(transition: Transition) -> None:
        signal, arguments = _signal_of(transition)
        if not signal.receivers:
            return  # the common case: nobody listens, nothing to do
        receivers = list(signal.receivers_for(app))
        if not receivers:
            return
        from quart import has_app_context

        if has_app_context():
            await _deliver(app, signal, receivers, arguments)
        else:
            async with app.app_context():
                await _deliver(app, signal, receivers, arguments)

    return send


async def _deliver(
    app: Quart, signal: NamedSignal, receivers: list[Any], arguments: dict[str, Any]
) -> None:
    for receiver in receivers:
        try:
            await app.ensure_async(receiver)(app, **arguments)
        except Exception:
            logger.exception("a receiver of quartsess's %s signal failed", signal.name)
