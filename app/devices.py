"""Your sessions: every device the user is logged in on, and logging them out from here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from quart import (
    Blueprint,
    ResponseReturnValue,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from ua_parser import parse

from quartsess import Session, SessionInfo, recent_authentication_required, session

from .auth import current_user, login_required
from .flashes import flash
from .recent import RECENT

bp = Blueprint("devices", __name__, url_prefix="/sessions")

UNKNOWN_BROWSER = "Unknown browser"
#: The session key holding the handles of the devices this one saw when it last looked
#: at the page (handles are safe to keep: they name sessions, they do not open them).
SEEN_KEY = "devices_seen"
UNKNOWN_SYSTEM = "unknown system"


@dataclass(frozen=True)
class Device:
    """One row of the page: a session as its user recognises it."""

    handle: str
    browser: str
    system: str
    ip_address: str
    signed_in: datetime
    last_active: datetime
    current: bool
    new: bool = False


@lru_cache(maxsize=256)
def describe_user_agent(user_agent: str | None) -> tuple[str, str]:
    """``(browser, operating system)`` read from a User-Agent: ``("Firefox 133", "Windows 10")``."""
    if not user_agent:
        return UNKNOWN_BROWSER, UNKNOWN_SYSTEM
    parsed = parse(user_agent)
    browser = UNKNOWN_BROWSER
    if parsed.user_agent is not None and parsed.user_agent.family != "Other":
        browser = " ".join(filter(None, (parsed.user_agent.family, parsed.user_agent.major)))
    system = UNKNOWN_SYSTEM
    if parsed.os is not None and parsed.os.family != "Other":
        system = " ".join(filter(None, (parsed.os.family, parsed.os.major)))
    return browser, system


def device_of(info: SessionInfo, *, new: bool = False) -> Device:
    browser, system = describe_user_agent(info.user_agent)
    return Device(
        handle=info.handle,
        browser=browser,
        system=system,
        ip_address=info.ip_address or "unknown",
        signed_in=info.created_at,
        last_active=info.last_seen_at,
        current=info.current,
        new=new,
    )


def new_sign_ins(sessions: list[SessionInfo], seen: object) -> set[str]:
    """The handles of the devices that signed in since this device last looked at the
    page (``seen``: the handles it saw then). The first look marks none: it is what
    later looks are compared with."""
    if not isinstance(seen, list):
        return set()
    return {info.handle for info in sessions if not info.current and info.handle not in seen}


def sessions_extension() -> Session:
    extension: Session = current_app.extensions["quartsess"]
    return extension


def username() -> str:
    user = current_user()
    if user is None:  # login_required runs first; this keeps the types honest
        abort(403)
    return user.username


@bp.get("/")
@login_required
async def show() -> ResponseReturnValue:
    """One row per device, this one first, then the most recently active."""
    sessions = await sessions_extension().user_sessions(username())
    fresh = new_sign_ins(sessions, session.get(SEEN_KEY))
    devices = sorted(
        (device_of(info, new=info.handle in fresh) for info in sessions),
        key=lambda device: not device.current,
    )
    seen = sorted(info.handle for info in sessions)
    if session.get(SEEN_KEY) != seen:
        session[SEEN_KEY] = seen  # a write only when the devices changed
    return await render_template(
        "devices.html", devices=devices, new_devices=[d for d in devices if d.new]
    )


@bp.post("/revoke")
@login_required
async def revoke() -> ResponseReturnValue:
    """Log out one other device of this user; a handle of anyone else's session is a 404."""
    handle = (await request.form).get("handle", "")
    if not handle:
        abort(400, description="No session given.")
    if handle == session.handle:
        abort(400, description="To end this device's session, use Log out.")
    if not await sessions_extension().revoke_session(handle, user=username()):
        abort(404, description="No such session of yours: it may have ended already.")
    await flash("That device is logged out.", "success")
    return redirect(url_for("devices.show"))


@bp.post("/revoke-others")
@login_required
@recent_authentication_required(RECENT)
async def revoke_others() -> ResponseReturnValue:
    """Log out every device of this user but this one."""
    count = await sessions_extension().revoke_user_sessions(username(), keep_current=True)
    others = "1 other device" if count == 1 else f"{count} other devices"
    await flash(f"Logged out {others}.", "success")
    return redirect(url_for("devices.show"))
