"""``@recent_authentication_required(max_age)``: routes for sensitive actions (changing the
password, "log out all other devices", deleting the account) need a recent
authentication, not only a live session (OWASP ASVS V7.5; Phoenix's sudo mode, Laravel's
password confirmation)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from .errors import ConfigurationError


def recent_authentication_required(
    max_age: float | timedelta,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Let a request reach the view only if its session's user proved who they are at
    most ``max_age`` ago (seconds or a ``timedelta``): at the login, or at the last
    :meth:`~quartsess.ServerSession.mark_authenticated`. Otherwise the request gets the
    app's answer registered with :meth:`Session.recent_authentication_handler
    <quartsess.Session.recent_authentication_handler>` (a redirect to a "confirm your
    password" page, say), or by default a 401
    (:class:`~quartsess.RecentAuthenticationRequired`).

    ::

        @app.post("/password")
        @recent_authentication_required(timedelta(minutes=10))
        async def change_password(): ...
    """
    seconds = max_age.total_seconds() if isinstance(max_age, timedelta) else max_age
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigurationError("max_age", "must be a number of seconds or a timedelta")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError("max_age", "must be a positive number of seconds")

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        async def check_then_run(*args: Any, **kwargs: Any) -> Any:
            from quart import current_app

            from .extension import EXTENSION_KEY, Session

            extension = current_app.extensions.get(EXTENSION_KEY)
            if not isinstance(extension, Session):
                raise RuntimeError("@recent_authentication_required needs Session(app)")
            if not extension.authenticated_within(seconds):
                return await extension.answer_stale_authentication()
            return await current_app.ensure_async(view)(*args, **kwargs)

        return check_then_run

    return decorate
