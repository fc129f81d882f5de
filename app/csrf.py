"""CSRF protection without a stored session: a signed double-submit token.

The browser keeps a random nonce in an HttpOnly cookie of its own (not the session); every
form carries an HMAC of that nonce under a key derived from the app's secret key, and every
state-changing request must bring both. A cross-site page can make the browser send the
cookie, but it can neither read the cookie nor compute the matching token. Nothing is stored
on the server, so the login form works, and is protected, on a first visit that stores no
session row.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from quart import Response, abort, current_app, g, has_websocket_context, request, websocket

FORM_FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
COOKIE_CONFIG = "CSRF_COOKIE_NAME"
# What secrets.token_urlsafe(32) makes; anything else in the cookie is ignored.
NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
_KEY_PURPOSE = b"quartsess-demo csrf token v1"


def csrf_token() -> str:
    """The token for this browser's nonce (a new nonce if it has none); every form has it."""
    nonce = g.get("csrf_new_nonce") or _cookie_nonce()
    if nonce is None:
        nonce = g.csrf_new_nonce = secrets.token_urlsafe(32)
    return _sign(nonce, _secret_keys()[0])


def rotate_csrf_token() -> None:
    """Give the browser a new nonce, so forms rendered before no longer work (call on login)."""
    g.csrf_new_nonce = secrets.token_urlsafe(32)


def is_valid_token(candidate: object) -> bool:
    """Whether ``candidate`` is the token for the nonce in this request's cookie."""
    nonce = _cookie_nonce()
    if nonce is None or not isinstance(candidate, str) or not candidate:
        return False
    # Tokens signed with a key in SECRET_KEY_FALLBACKS stay valid through a key rotation.
    return any(
        hmac.compare_digest(candidate.encode(), _sign(nonce, key).encode())
        for key in _secret_keys()
    )


async def check_csrf() -> None:
    """``before_request`` hook: 400 for an unsafe method without a valid token."""
    if request.method in SAFE_METHODS:
        return
    form = await request.form
    candidate = form.get(FORM_FIELD) or request.headers.get(HEADER)
    if not is_valid_token(candidate):
        abort(400, description="The form's security token is missing or out of date.")


async def set_csrf_cookie(response: Response) -> Response:
    """``after_request`` hook: hand a new nonce to the browser when this request made one."""
    nonce = g.get("csrf_new_nonce")
    if nonce is not None:
        response.set_cookie(
            current_app.config[COOKIE_CONFIG],
            nonce,
            path="/",  # required by the __Host- prefix, and every page has forms
            secure=bool(current_app.config["SESSION_COOKIE_SECURE"]),
            httponly=True,
            samesite="Lax",
        )
        # A page that sets a cookie must not be kept by a shared cache.
        response.headers["Cache-Control"] = "no-store"
        response.vary.add("Cookie")
    return response


def _cookie_nonce() -> str | None:
    cookies = websocket.cookies if has_websocket_context() else request.cookies
    nonce = cookies.get(current_app.config[COOKIE_CONFIG])
    return nonce if nonce is not None and NONCE_PATTERN.fullmatch(nonce) else None


def _secret_keys() -> list[bytes]:
    config = current_app.config
    keys = [config["SECRET_KEY"], *(config.get("SECRET_KEY_FALLBACKS") or [])]
    return [key.encode() if isinstance(key, str) else bytes(key) for key in keys if key]


def _sign(nonce: str, secret_key: bytes) -> str:
    key = hmac.new(secret_key, _KEY_PURPOSE, hashlib.sha256).digest()
    digest = hmac.new(key, nonce.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
