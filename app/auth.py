"""Log in, log out, and the ``login_required`` decorator."""

from __future__ import annotations

import asyncio
import logging
import math
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from quart import (
    Blueprint,
    ResponseReturnValue,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.security import check_password_hash

from .csrf import rotate_csrf_token
from .flashes import flash
from .logs import capped
from .throttle import LoginThrottle

bp = Blueprint("auth", __name__)
logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class DemoUser:
    """A user of the demo; the password is shown on the login page, only its hash is here."""

    username: str
    display_name: str
    demo_password: str
    password_hash: str


# Hashes made with werkzeug.security.generate_password_hash(password, method="scrypt").
USERS: dict[str, DemoUser] = {
    user.username: user
    for user in (
        DemoUser(
            "alice",
            "Alice Liddell",
            "wonderland",
            "scrypt:32768:8:1$akcb2640jXzo8zsK$1099775e6709fc7e917e2264906aa8c06254ae273750b53"
            "3a91f608b2a8c1bf3c71045ca928b8b240e41c78b12f8b97dcd13a8ed6fea572ffa4be936b757cdd9",
        ),
        DemoUser(
            "bob",
            "Bob the Builder",
            "builder",
            "scrypt:32768:8:1$O7VcEvRCUbCqP2fu$02c468da4ccd59f0c3cb40cbe6308c420ea869d5254d2ea"
            "7e5818aa76638241fb6e072660aeedb636f34294025a544c6ae0fb4d92562174a2e207c33e3d2ddaa",
        ),
    )
}
LOGGED_NAME_LENGTH = 64  # a username in the log is cut to this many characters
# Checked for unknown usernames too, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = USERS["alice"].password_hash


def current_user() -> DemoUser | None:
    """The logged-in user, or ``None``."""
    username = session.get("user")
    return USERS.get(username) if isinstance(username, str) else None


def login_required(
    view: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R | ResponseReturnValue]]:
    """Send logged-out visitors to the login page, coming back here afterwards."""

    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
        if current_user() is None:
            # No flash: it would store a session for a visitor who only looked. The
            # login page says "please log in" itself when it has somewhere to go back to.
            return redirect(url_for("auth.login", next=request.path))
        return await view(*args, **kwargs)

    return wrapper


async def authenticate(username: str, password: str) -> DemoUser | None:
    """The user whose password this is (the one they set, else the demo's), or ``None``.
    Hashing runs off the event loop."""
    user = USERS.get(username)
    stored = user.password_hash if user else _DUMMY_HASH
    if user is not None:
        changed = await current_app.extensions["passwords"].hash_for(username)
        stored = changed or stored
    matches = await asyncio.to_thread(check_password_hash, stored, password)
    return user if matches and user is not None else None


def safe_next(target: str | None) -> str:
    """A local path to continue to after login; anything else becomes the dashboard.

    Control characters are refused: browsers drop tab, CR and LF from a Location (so
    ``/\t/evil.example`` would lead off-site) and the server cannot send the others in a
    header at all, which would fail the response after the login was saved."""
    if target and not any(_is_control(character) for character in target):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and "\\" not in target:
            if not target.startswith("//"):
                return target
    return url_for("main.dashboard")


def _is_control(character: str) -> bool:
    return unicodedata.category(character) == "Cc"


@bp.get("/login")
async def login() -> ResponseReturnValue:
    """The login form, with the demo credentials."""
    if current_user() is not None:
        return redirect(url_for("main.dashboard"))
    target = request.args.get("next", "")
    return await render_template(
        "login.html",
        users=list(USERS.values()),
        next=target,
        sent_here=bool(target) and safe_next(target) == target,
        username="",
        error=None,
    )


@bp.post("/login")
async def login_submit() -> ResponseReturnValue:
    """Check the credentials; on success log in (quartsess moves the session to a new ID).

    Too many failed logins for the account or from the client's address are refused with
    a 429 before the password is even checked, the right one included."""
    form = await request.form
    username = form.get("username", "").strip()
    context = {"users": list(USERS.values()), "next": form.get("next", ""), "username": username}
    client = request.remote_addr or ""
    # What the client sent, short; %r below escapes line breaks and control characters.
    shown, shown_client = capped(username, LOGGED_NAME_LENGTH), capped(client)
    throttle = login_throttle()
    wait = await throttle.reserve(username, client)
    if wait is not None:
        return await throttled_answer("login.html", wait, username, client, **context)
    user = await authenticate(username, form.get("password", ""))
    if user is None:
        # No flash and no other write: a failed login leaves the session as it was.
        logger.info("failed login for %r from %r", shown, shown_client)
        error = "Unknown username or wrong password."
        body = await render_template("login.html", error=error, **context)
        return body, 200
    await throttle.refund(username, client)
    rotate_csrf_token()
    # "user" is SESSION_USER_KEY: quartsess moves the session to a new ID when it changes,
    # which defeats session fixation without a call to regenerate().
    session["user"] = user.username
    await flash(f"Welcome, {user.display_name}!", "success")
    return redirect(safe_next(form.get("next")))


async def throttled_answer(
    template: str, wait: int, account: str, address: str, **context: Any
) -> ResponseReturnValue:
    """The 429 of a password form whose account or client is over its limit."""
    logger.warning(
        "login for %r from %r refused for %d s: too many failures",
        capped(account, LOGGED_NAME_LENGTH),
        capped(address),
        wait,
    )
    error = f"Too many failed logins. Try again in {_minutes(wait)}."
    body = await render_template(template, error=error, **context)
    return body, 429, {"Retry-After": str(wait)}


def login_throttle() -> LoginThrottle:
    """The app's shared failed-login counters."""
    throttle: LoginThrottle = current_app.extensions["login_throttle"]
    return throttle


def _minutes(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


@bp.post("/logout")
async def logout() -> ResponseReturnValue:
    """Delete the session server-side and its cookie."""
    session.clear()
    response = redirect(url_for("main.index", logged_out=1))
    # Browsers that know the header also drop this site's other cookies (the CSRF nonce)
    # and whatever scripts kept in localStorage and sessionStorage.
    response.headers["Clear-Site-Data"] = '"cookies", "storage"'
    return response
