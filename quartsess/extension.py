"""The ``Session`` extension: wires settings, serializer, codec, store, interface and
pruner to a Quart app, and ties the store and the pruner to the app's serving lifecycle."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from weakref import WeakKeyDictionary

from .cli import sessions_cli
from .codec import PayloadCodec
from .config import SessionConfig, setting_warnings
from .errors import ConfigurationError, RecentAuthenticationRequired, StoreError, TableMissing
from .expiry import ExpiryPolicy
from .holds import SessionHolds
from .interface import ServerSessionInterface
from .lifecycle import Lifecycle
from .live import LiveWebsockets
from .owners import OwnerKeys
from .pruner import Pruner
from .saving import SessionSaver
from .serializer import SessionSerializer
from .signals import sender_for
from .stores.base import MaintainedStore
from .stores.sql import SqlStore
from .users import SessionInfo, UserSessions

if TYPE_CHECKING:
    from quart import Quart
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .clock import Clock

logger = logging.getLogger("quartsess")

EXTENSION_KEY = "quartsess"


@dataclass(frozen=True, slots=True)
class SessionParts:
    """Everything quartsess is made of for one app, built once by :meth:`Session.compose`
    and handed down: no part builds another."""

    config: SessionConfig
    store: MaintainedStore
    codec: PayloadCodec
    owners: OwnerKeys
    policy: ExpiryPolicy
    lifecycle: Lifecycle
    users: UserSessions
    saver: SessionSaver
    pruner: Pruner
    live: LiveWebsockets
    holds: SessionHolds
    interface: ServerSessionInterface


class Session:
    """Server-side sessions for a Quart app: ``Session(app)`` or ``Session().init_app(app)``.

    ``engine``: the app's own SQLAlchemy ``AsyncEngine``, whose pool then keeps the
    sessions too (see :meth:`init_app`); given here, it serves every app this object is
    initialised for without one of its own. ``clock`` returns the current time in
    epoch seconds; tests inject one to move time without sleeping. After ``init_app``,
    ``app.extensions["quartsess"]`` is this object.
    """

    # The parts this builds for each app; a subclass swaps one by naming another class.

    #: The session interface installed on the app; subclass it to override a helper
    #: such as ``get_cookie_secure`` and set it here on a subclass of ``Session``.
    interface_class: type[ServerSessionInterface] = ServerSessionInterface
    #: Where rows are kept: built with ``store_class.from_config(config)``. The SQL
    #: store by default; :class:`~quartsess.stores.MemoryStore` for tests without a database.
    store_class: type[MaintainedStore] = SqlStore
    #: Encrypts payloads: built with ``(keys, max_bytes, serializer)``.
    codec_class: type[PayloadCodec] = PayloadCodec
    #: Turns session data into bytes; subclass it and ``register`` a ``JSONTag`` in
    #: ``__init__`` to store types of your own.
    serializer_class: type[SessionSerializer] = SessionSerializer

    def __init__(
        self,
        app: Quart | None = None,
        *,
        engine: AsyncEngine | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._clock = clock
        self._engine = engine
        self._parts: WeakKeyDictionary[Quart, SessionParts] = WeakKeyDictionary()
        self._stale_authentication: Callable[[], Awaitable[Any]] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart, *, engine: AsyncEngine | None = None) -> None:
        """Validate the app's settings and install the session interface.

        With ``engine`` (the app's own ``AsyncEngine``, on SQLite, PostgreSQL or
        MariaDB/MySQL), the sessions use its pool for everything instead of making an
        engine of their own: ``SESSION_DB_URL`` may then only repeat its URL and
        ``SESSION_ENGINE_OPTIONS`` must be empty. quartsess never disposes it, not even
        when the app shuts down. Raises :class:`~quartsess.ConfigurationError` naming
        the setting to fix."""
        config = SessionConfig.from_mapping(
            app.config,
            instance_path=app.instance_path,
            engine=engine if engine is not None else self._engine,
        )
        for warning in setting_warnings(app.config):
            logger.warning("%s", warning)
        parts = self.compose(config, app)
        # Quart types the attribute as its cookie interface; any SessionInterface works.
        app.session_interface = parts.interface  # type: ignore[assignment]
        app.extensions[EXTENSION_KEY] = self
        self._parts[app] = parts
        _add_cli(app)

        async def start_serving() -> None:
            _warn_insecure_cookies(app)
            parts.store.keep_connections(True)
            try:
                await parts.store.prepare(create_table=config.create_table)
            except TableMissing as error:
                if config.require_table:
                    # A failed rollout rather than a degraded one: the app does not start.
                    logger.error("refusing to start (SESSION_REQUIRE_TABLE): %s", error)
                    parts.store.keep_connections(False)
                    await parts.store.close()
                    raise
                logger.error("%s; until then requests that use the session get 503", error)
            except StoreError as error:
                # Serve anyway: pages that need no session keep working, the others get
                # 503 until the database answers (then the table is created if needed).
                logger.error(
                    "session store not reachable at start-up (%s); requests that use the "
                    "session get 503 until it answers",
                    error,
                )
            parts.pruner.start()

        async def stop_serving() -> None:
            await parts.pruner.stop()
            await parts.live.stop()
            await parts.interface.wait_for_saves()  # saves outlive cancelled requests
            parts.store.keep_connections(False)
            await parts.store.close()

        app.before_serving(start_serving)
        app.after_serving(stop_serving)

    def compose(self, config: SessionConfig, app: Quart | None = None) -> SessionParts:
        """Build every part for ``config``, each once: the one place where they are made
        and wired together. With ``app``, every lifecycle transition is sent as its
        signal (``quartsess.signals``) with ``app`` as the sender."""
        store = self.make_store(config)
        codec = self.codec_class(config.encryption_keys, config.max_bytes, self.serializer_class())
        owners = OwnerKeys(config.encryption_keys)
        policy = ExpiryPolicy.from_config(config)
        lifecycle = Lifecycle(store, codec, config.user_key)
        if app is not None:
            lifecycle.listeners.append(sender_for(app))
        users = UserSessions(
            store, codec, owners, policy, lifecycle, self._clock, max_per_user=config.max_per_user
        )
        saver = SessionSaver(
            store,
            codec,
            owners,
            policy,
            lifecycle,
            self._clock,
            create_table=config.create_table,
            user_key=config.user_key,
            users=users,
        )
        pruner = Pruner(lifecycle, clock=self._clock, interval=config.prune_interval)
        live = LiveWebsockets(saver, config.websocket_check_interval)
        holds = SessionHolds(saver, config.exclusive_timeout)
        interface = self.interface_class(saver, config, live, holds)
        return SessionParts(
            config,
            store,
            codec,
            owners,
            policy,
            lifecycle,
            users,
            saver,
            pruner,
            live,
            holds,
            interface,
        )

    def make_store(self, config: SessionConfig) -> MaintainedStore:
        """The store for an app's settings (``store_class.from_config``)."""
        if config.engine is not None and not issubclass(self.store_class, SqlStore):
            raise ConfigurationError(
                "engine",
                f"{self.store_class.__name__} does not keep sessions in SQL, so it cannot "
                "use the app's engine; pass engine= only with the SQL store",
            )
        return self.store_class.from_config(config)

    def parts_for(self, app: Quart | None = None) -> SessionParts:
        """What quartsess built for ``app`` (default: the current app, or the only one)."""
        if app is None:
            from quart import current_app, has_app_context

            if has_app_context():
                # Any: Quart 0.22 types the proxy as the app, 0.23 as a proxy.
                app = cast(Any, current_app)._get_current_object()
            elif not self._parts:
                raise RuntimeError(
                    "this Session serves no app yet: call Session(app) or init_app(app) first"
                )
            elif len(self._parts) > 1:
                raise RuntimeError("pass the app: this Session serves several apps")
            else:
                app = next(iter(self._parts))
        try:
            return self._parts[app]
        except KeyError:
            raise RuntimeError("Session.init_app(app) was not called for this app") from None

    def interface_for(self, app: Quart | None = None) -> ServerSessionInterface:
        """The session interface installed on ``app`` (default: the current or only app)."""
        return self.parts_for(app).interface

    def store_for(self, app: Quart | None = None) -> MaintainedStore:
        """The store of ``app`` (default: the current or only app)."""
        return self.parts_for(app).store

    def pruner_for(self, app: Quart | None = None) -> Pruner:
        """The pruner of ``app`` (default: the current or only app)."""
        return self.parts_for(app).pruner

    async def prune(self, app: Quart | None = None) -> int:
        """Delete every expired session row now, in batches; returns how many went.

        On PostgreSQL this waits while another worker is pruning the same table."""
        parts = self.parts_for(app)
        async with _store_call(parts, "pruning"):
            return await parts.pruner.prune()

    # -- user sessions --------------------------------------------------------------

    async def user_sessions(self, user: object, app: Quart | None = None) -> list[SessionInfo]:
        """The live sessions of ``user`` (``str(user)``, as ``SESSION_USER_KEY`` holds
        it), most recently active first. Inside a request, the request's own session is
        marked ``current``."""
        parts = self.parts_for(app)
        async with _store_call(parts, "listing a user's sessions"):
            return await parts.users.list(str(user), current_handle=_current_handle())

    async def revoke_session(
        self, handle: str, *, user: object | None = None, app: Quart | None = None
    ) -> bool:
        """End the session named ``handle`` (with ``user``: only if it is theirs, as a
        "log out this device" button needs). True if a session went. Effective on that
        session's next request, in any worker."""
        parts = self.parts_for(app)
        async with _store_call(parts, "revoking a session"):
            return await parts.users.revoke(handle, user=None if user is None else str(user))

    async def revoke_user_sessions(
        self, user: object, *, keep_current: bool = False, app: Quart | None = None
    ) -> int:
        """End every session of ``user`` ("log out everywhere"; with ``keep_current``,
        all but the request's own: "log out all other devices"); returns how many went."""
        parts = self.parts_for(app)
        keep = _current_handle() if keep_current else None
        if keep_current and keep is None:
            raise RuntimeError("keep_current needs a request whose session is stored")
        async with _store_call(parts, "revoking a user's sessions"):
            return await parts.users.revoke_all(str(user), except_handle=keep)

    # -- step-up authentication ------------------------------------------------------

    def recent_authentication_handler(self, handler: Callable[[], Any]) -> Callable[[], Any]:
        """Register what a request gets when a ``@recent_authentication_required`` route
        finds its authentication too old, instead of a 401 (usable as a decorator): a
        plain or coroutine function taking no arguments, returning a response, typically a
        redirect to a "confirm your password" page that comes back to ``request.url``.
        That page checks the password and calls ``session.mark_authenticated()``."""
        from quart import current_app

        def ensured() -> Awaitable[Any]:
            return current_app.ensure_async(handler)()

        self._stale_authentication = ensured
        return handler

    def authenticated_within(self, seconds: float) -> bool:
        """Whether the current request's session is bound to a user who proved who they
        are at most ``seconds`` ago."""
        from quart import session

        stamp = getattr(session, "authenticated_at", None)
        return stamp is not None and self._clock() - stamp.timestamp() <= seconds

    async def answer_stale_authentication(self) -> Any:
        """The answer to a request whose authentication is too old: the app's handler's,
        or a 401 (:class:`~quartsess.RecentAuthenticationRequired`)."""
        if self._stale_authentication is None:
            raise RecentAuthenticationRequired()
        return await self._stale_authentication()

    @property
    def store(self) -> MaintainedStore:
        """The store of the current (or only) app."""
        return self.store_for()

    @property
    def config(self) -> SessionConfig:
        """The validated settings of the current (or only) app."""
        return self.parts_for().config


@asynccontextmanager
async def _store_call(parts: SessionParts, what: str) -> AsyncIterator[None]:
    """Prepare the store as a request would (so a fresh SQLite file gets its table), and
    log a store error once before it propagates: a :class:`~quartsess.StoreError`, which
    a view turns into a 503 with ``Retry-After``."""
    try:
        await parts.store.prepare(create_table=parts.config.create_table)
        yield
    except StoreError as error:
        level = logging.DEBUG if error.logged else logging.ERROR  # reported where found
        logger.log(level, "session store failed while %s: %s", what, error)
        raise


def _current_handle() -> str | None:
    from quart import has_request_context, has_websocket_context, session

    if not (has_request_context() or has_websocket_context()):
        return None
    handle = getattr(session, "handle", None)  # through the proxy to a ServerSession
    return handle if isinstance(handle, str) else None


def _add_cli(app: Quart) -> None:
    if "sessions" not in app.cli.commands:
        app.cli.add_command(sessions_cli)


def _warn_insecure_cookies(app: Quart) -> None:
    if app.debug or app.testing:
        return
    interface = app.session_interface
    if not interface.get_cookie_secure(app):
        logger.warning(
            "SESSION_COOKIE_SECURE is False: the session cookie will be sent over plain "
            "HTTP. Set it to True when serving over HTTPS."
        )
    if not interface.get_cookie_httponly(app):
        logger.warning(
            "SESSION_COOKIE_HTTPONLY is False: page scripts can read the session cookie."
        )
    samesite = interface.get_cookie_samesite(app)
    if samesite and samesite.lower() == "none" and not interface.get_cookie_secure(app):
        logger.warning("SESSION_COOKIE_SAMESITE='None' needs SESSION_COOKIE_SECURE=True.")
