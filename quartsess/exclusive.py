"""``@exclusive``: a route whose requests of one session run one at a time."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def exclusive(view: Callable[P, Any]) -> Callable[P, Any]:
    """Run the requests of one session to this route one at a time, across every worker
    and machine sharing the database, each on the content the previous one saved: for
    changes a merge cannot get right, such as ``session["n"] += 1``.

    Requests of other sessions, and this session's requests to other routes, are not
    held up; a request without a stored session has nothing to wait for. A request waits
    at most ``SESSION_EXCLUSIVE_TIMEOUT`` seconds (then a 503 with ``Retry-After``:
    :class:`~quartsess.SessionBusy`); the hold ends when its response is saved, when the
    view raises, or when the client goes away, and a worker that dies holding one loses
    it within 5 seconds. For HTTP routes only: a websocket would hold its session for
    its whole life.

    Put it right under the route decorator, above decorators that read the session
    (``login_required``, say), so they see the content the hold brought up to date.
    Signal receivers of the request's save run before the hold is released: keep them
    quick.

    ::

        @app.post("/cart/add")
        @exclusive
        @login_required
        async def add_to_cart(): ...
    """

    @functools.wraps(view)
    async def hold_then_run(*args: P.args, **kwargs: P.kwargs) -> Any:
        from quart import current_app, has_websocket_context
        from quart import session as current_session

        from .interface import ServerSessionInterface

        if has_websocket_context():
            raise RuntimeError("@exclusive is for HTTP routes, not websocket handlers")
        interface = current_app.session_interface
        if not isinstance(interface, ServerSessionInterface):
            raise RuntimeError("@exclusive needs quartsess: call Session(app)")
        # The proxy's object: Quart 0.23 has no request_ctx in quart.globals.
        await interface.hold(current_session._get_current_object())
        return await current_app.ensure_async(view)(*args, **kwargs)

    return hold_then_run
