"""CSRF protection without a stored token: a signed double-submit token, bound to the session.

The browser keeps a random nonce in an HttpOnly cookie of its own (not the session). Every
form carries an HMAC of that nonce and, when the browser has a stored session, of the
session's handle, under a key derived from the app's secret key; every state-changing
request must bring the cookie and a token for it. A cross-site page can make the browser
send the cookie, but can neither read it nor compute a token. A page that can *plant*
cookies for the site (a sibling subdomain, or plain http) can swap in a nonce of its own,
for which it got a token; but that token is not for the victim's session, so it is refused
wherever there is one.

A token has two parts, ``<for the nonce>.<for the nonce and the handle>`` (the second is
empty when the page was made before the browser had a stored session):

- no stored session: the first part must match (the login form works on a first visit,
  and a form still works after its session expired or was logged out elsewhere);
- a stored session: the second part must match, or the first part if this browser's nonce
  made the session (a form shown before the first action stored it, such as the visits
  page's websocket token). The session remembers a hash of that nonce until login, which
  gives the browser a new nonce and forgets it; a logged-in session needs its handle.

Nothing but that hash is stored, and only in a session that is being stored anyway, so
viewing a page still stores nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from quart import Response, abort, current_app, g, has_websocket_context, request, websocket

from quartsess import session

from .secret import derive_key

FORM_FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
COOKIE_CONFIG = "CSRF_COOKIE_NAME"
# What secrets.token_urlsafe(32) makes; anything else in the cookie is ignored.
NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
# In a session: SHA-256 of the nonce of the browser that made it (see the module's text).
MADE_BY_KEY = "_csrf_made_by"
_KEY_PURPOSE = b"quartsess-demo csrf token v2"


def csrf_token() -> str:
    """The token for this browser's nonce (a new nonce if it has none) and its session's
    handle, if it has a stored session; every form has it."""
    nonce = g.get("csrf_new_nonce") or _cookie_nonce()
    if nonce is None:
        nonce = g.csrf_new_nonce = secrets.token_urlsafe(32)
    key = _keys()[0]
    handle = session.handle
    bound = "" if handle is None else _sign(key, nonce, handle)
    return f"{_sign(key, nonce)}.{bound}"


def rotate_csrf_token() -> None:
    """Give the browser a new nonce, so forms rendered before no longer work (call on login)."""
    g.csrf_new_nonce = secrets.token_urlsafe(32)
    g.csrf_rotated = True
    session.pop(MADE_BY_KEY, None)


def is_valid_token(candidate: object) -> bool:
    """Whether ``candidate`` is a token for the nonce in this request's cookie and for the
    session it brings (see the module's text)."""
    nonce = _cookie_nonce()
    if nonce is None or not isinstance(candidate, str):
        return False
    for_nonce, _, for_session = candidate.partition(".")
    handle = session.handle
    if handle is None:
        return _matches(for_nonce, nonce)
    if _matches(for_session, nonce, handle):
        return True
    made_by = session.get(MADE_BY_KEY)
    return (
        isinstance(made_by, str)
        and hmac.compare_digest(made_by, _digest(nonce))
        and _matches(for_nonce, nonce)
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
    """``after_request`` hook: hand a new nonce to the browser when this request made one,
    and have a session stored for the first time remember which nonce made it."""
    nonce = g.get("csrf_new_nonce")
    _remember_the_maker(nonce or _cookie_nonce())
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


def _remember_the_maker(nonce: str | None) -> None:
    # Only a new session with data (which quartsess is about to store), and never at
    # login: a logged-in session accepts only tokens bound to its handle.
    if nonce is None or session.handle is not None or g.get("csrf_rotated"):
        return
    if session.contents():
        session[MADE_BY_KEY] = _digest(nonce)


def _matches(candidate: str, nonce: str, handle: str = "") -> bool:
    # Tokens signed with a key from SECRET_KEY_FALLBACKS stay valid through a key rotation.
    return bool(candidate) and any(
        hmac.compare_digest(candidate.encode(), _sign(key, nonce, handle).encode())
        for key in _keys()
    )


def _cookie_nonce() -> str | None:
    cookies = websocket.cookies if has_websocket_context() else request.cookies
    nonce = cookies.get(current_app.config[COOKIE_CONFIG])
    return nonce if nonce is not None and NONCE_PATTERN.fullmatch(nonce) else None


def _keys() -> list[bytes]:
    config = current_app.config
    secrets_ = [config["SECRET_KEY"], *(config.get("SECRET_KEY_FALLBACKS") or [])]
    return [derive_key(secret, _KEY_PURPOSE) for secret in secrets_ if secret]


def _sign(key: bytes, nonce: str, handle: str = "") -> str:
    # A handle is never empty, so "" stands for "no session" without ambiguity.
    digest = hmac.new(key, f"{nonce}\0{handle}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()
