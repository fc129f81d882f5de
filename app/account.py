"""Sensitive actions need a recent login: confirming the password, and changing it.

"Change password" and "Log out all other devices" are ``@recent_authentication_required``
(10 minutes): a session whose user logged in or confirmed their password longer ago is
sent to "Confirm your password" (throttled as the login is), which calls
``session.mark_authenticated()`` and goes back."""

from __future__ import annotations

import asyncio
import logging

from quart import (
    Blueprint,
    ResponseReturnValue,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.security import generate_password_hash

from quartsess import Session, recent_authentication_required, session

from .auth import authenticate, login_required, login_throttle, safe_next, throttled_answer
from .csrf import rotate_csrf_token
from .flashes import flash
from .logs import capped
from .passwords import PasswordStore
from .recent import RECENT

bp = Blueprint("account", __name__, url_prefix="/account")
logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 8


def password_store() -> PasswordStore:
    store: PasswordStore = current_app.extensions["passwords"]
    return store


def username() -> str:
    name = session.get("user")
    return name if isinstance(name, str) else ""


async def confirm_first() -> ResponseReturnValue:
    """The answer to a sensitive action whose login is too old: confirm, then come back
    (to the page a form was on, for a form's POST)."""
    if request.method == "GET":
        back = request.full_path.rstrip("?")
    else:
        back = request.referrer or ""
        if back.startswith(request.host_url):
            back = "/" + back[len(request.host_url) :]
    return redirect(url_for("account.confirm", next=safe_next(back)))


def install(app_extension: Session) -> None:
    app_extension.recent_authentication_handler(confirm_first)


@bp.get("/confirm")
@login_required
async def confirm() -> ResponseReturnValue:
    return await render_template("confirm.html", next=request.args.get("next", ""), error=None)


@bp.post("/confirm")
@login_required
async def confirm_submit() -> ResponseReturnValue:
    """Check the password again; on success the session is authenticated as of now."""
    form = await request.form
    target = form.get("next", "")
    user, client = username(), request.remote_addr or ""
    throttle = login_throttle()
    wait = await throttle.reserve(user, client)
    if wait is not None:
        return await throttled_answer("confirm.html", wait, user, client, next=target)
    if await authenticate(user, form.get("password", "")) is None:
        logger.info("failed password confirmation for %r", capped(user, 64))
        body = await render_template(
            "confirm.html", next=target, error="That is not your password."
        )
        return body, 200
    await throttle.refund(user, client)
    session.mark_authenticated()
    return redirect(safe_next(target))


@bp.get("/password")
@login_required
@recent_authentication_required(RECENT)
async def password() -> ResponseReturnValue:
    return await render_template("password.html", error=None)


@bp.post("/password")
@login_required
@recent_authentication_required(RECENT)
async def password_submit() -> ResponseReturnValue:
    """Set a new password, and log out every other device of the user."""
    form = await request.form
    new, again = form.get("new_password", ""), form.get("new_password_again", "")
    error = None
    if len(new) < MIN_PASSWORD_LENGTH:
        error = f"Use at least {MIN_PASSWORD_LENGTH} characters."
    elif new != again:
        error = "The two passwords differ."
    if error is not None:
        return await render_template("password.html", error=error), 200
    user = username()
    hashed = await asyncio.to_thread(generate_password_hash, new, method="scrypt")
    await password_store().set(user, hashed)
    extension: Session = current_app.extensions["quartsess"]
    others = await extension.revoke_user_sessions(user, keep_current=True)
    # New credentials, a new session ID and a new CSRF nonce (OWASP's advice).
    session.regenerate()
    rotate_csrf_token()
    logger.info("password changed for %r; %d other sessions ended", capped(user, 64), others)
    devices = "1 other device" if others == 1 else f"{others} other devices"
    await flash(f"Password changed. Logged out {devices}.", "success")
    return redirect(url_for("main.dashboard"))
