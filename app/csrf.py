"""CSRF protection: one random token per session, required on every state-changing request."""

from __future__ import annotations

import hmac
import secrets

from quart import abort, request, session

SESSION_KEY = "csrf_token"
FORM_FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def csrf_token() -> str:
    """The session's token (created on first use); templates put it in every form."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[SESSION_KEY] = token
    return token


def rotate_csrf_token() -> None:
    """Forget the token, so the next form gets a fresh one (call on login)."""
    session.pop(SESSION_KEY, None)


def is_valid_token(candidate: object) -> bool:
    """Whether ``candidate`` matches the session's token, compared in constant time."""
    expected = session.get(SESSION_KEY)
    if not isinstance(expected, str) or not isinstance(candidate, str) or not candidate:
        return False
    return hmac.compare_digest(candidate.encode(), expected.encode())


async def check_csrf() -> None:
    """``before_request`` hook: 400 for an unsafe method without the session's token."""
    if request.method in SAFE_METHODS:
        return
    form = await request.form
    candidate = form.get(FORM_FIELD) or request.headers.get(HEADER)
    if not is_valid_token(candidate):
        abort(400, description="The form's security token is missing or out of date.")
