"""The ``Session`` extension: wires settings, serializer, codec, store, interface and
pruner to a Quart app, and ties the store and the pruner to the app's serving lifecycle."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from .cli import sessions_cli
from .codec import PayloadCodec
from .config import SessionConfig, check_driver_installed, setting_warnings
from .errors import TableMissing, describe_error
from .interface import ServerSessionInterface
from .pruner import Pruner
from .saving import ExpiryPolicy
from .serializer import SessionSerializer
from .stores.base import STORE_ERRORS, MaintainedStore
from .stores.sql import SqlStore
from .users import SessionInfo, UserSessions

if TYPE_CHECKING:
    from .clock import Clock

if TYPE_CHECKING:
    from quart import Quart

logger = logging.getLogger("quartsess")

EXTENSION_KEY = "quartsess"


class Session:
    """Server-side sessions for a Quart app: ``Session(app)`` or ``Session().init_app(app)``.

    ``clock`` returns the current time in epoch seconds; tests inject one to move time
    without sleeping. After ``init_app``, ``app.extensions["quartsess"]`` is this object.
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

    def __init__(self, app: Quart | None = None, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._interfaces: WeakKeyDictionary[Quart, ServerSessionInterface] = WeakKeyDictionary()
        self._stores: WeakKeyDictionary[ServerSessionInterface, MaintainedStore] = (
            WeakKeyDictionary()
        )
        self._pruners: WeakKeyDictionary[ServerSessionInterface, Pruner] = WeakKeyDictionary()
        self._users: WeakKeyDictionary[ServerSessionInterface, UserSessions] = WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        """Validate the app's settings and install the session interface.

        Raises :class:`~quartsess.ConfigurationError` naming the setting to fix."""
        config = SessionConfig.from_mapping(app.config, instance_path=app.instance_path)
        check_driver_installed(config.db_url)
        for warning in setting_warnings(app.config):
            logger.warning("%s", warning)
        store = self.make_store(config)
        codec = self.codec_class(config.encryption_keys, config.max_bytes, self.serializer_class())
        users = UserSessions(
            store,
            codec,
            ExpiryPolicy.from_config(config),
            self._clock,
            max_per_user=config.max_per_user,
        )
        interface = self.interface_class(
            store=store, codec=codec, config=config, clock=self._clock, users=users
        )
        # Quart types the attribute as its cookie interface; any SessionInterface works.
        app.session_interface = interface  # type: ignore[assignment]
        app.extensions[EXTENSION_KEY] = self
        self._interfaces[app] = interface
        self._stores[interface] = store
        self._users[interface] = users
        pruner = Pruner(store, clock=self._clock, interval=config.prune_interval)
        self._pruners[interface] = pruner
        _add_cli(app)

        async def start_serving() -> None:
            _warn_insecure_cookies(app)
            store.keep_connections(True)
            try:
                await store.prepare(create_table=config.create_table)
            except TableMissing as error:
                logger.error("%s; until then requests that use the session get 503", error)
            except STORE_ERRORS as error:
                # Serve anyway: pages that need no session keep working, the others get
                # 503 until the database answers (then the table is created if needed).
                logger.error(
                    "session store not reachable at start-up (%s); requests that use the "
                    "session get 503 until it answers",
                    describe_error(error),
                )
            pruner.start()

        async def stop_serving() -> None:
            await pruner.stop()
            await interface.wait_for_saves()  # saves outlive cancelled requests
            store.keep_connections(False)
            await store.close()

        app.before_serving(start_serving)
        app.after_serving(stop_serving)

    def make_store(self, config: SessionConfig) -> MaintainedStore:
        """The store for an app's settings (``store_class.from_config``)."""
        return self.store_class.from_config(config)

    def interface_for(self, app: Quart | None = None) -> ServerSessionInterface:
        """The session interface installed on ``app`` (default: the current or only app)."""
        if app is None:
            from quart import current_app, has_app_context

            if has_app_context():
                interface = current_app.session_interface
                if isinstance(interface, ServerSessionInterface) and interface in self._stores:
                    return interface
                raise RuntimeError("Session.init_app(app) was not called for this app")
            if len(self._interfaces) != 1:
                raise RuntimeError("pass the app: this Session serves several apps")
            app = next(iter(self._interfaces))
        try:
            return self._interfaces[app]
        except KeyError:
            raise RuntimeError("Session.init_app(app) was not called for this app") from None

    def store_for(self, app: Quart | None = None) -> MaintainedStore:
        """The store of ``app`` (default: the current or only app)."""
        return self._stores[self.interface_for(app)]

    def pruner_for(self, app: Quart | None = None) -> Pruner:
        """The pruner of ``app`` (default: the current or only app)."""
        return self._pruners[self.interface_for(app)]

    async def prune(self, app: Quart | None = None) -> int:
        """Delete every expired session row now, in batches; returns how many went.

        On PostgreSQL this waits while another worker is pruning the same table."""
        return await self.pruner_for(app).prune()

    # -- user sessions --------------------------------------------------------------

    async def user_sessions(self, user: object, app: Quart | None = None) -> list[SessionInfo]:
        """The live sessions of ``user`` (``str(user)``, as ``SESSION_USER_KEY`` holds
        it), most recently active first. Inside a request, the request's own session is
        marked ``current``."""
        users = self._users[self.interface_for(app)]
        return await users.list(str(user), current_handle=_current_handle())

    async def revoke_session(
        self, handle: str, *, user: object | None = None, app: Quart | None = None
    ) -> bool:
        """End the session named ``handle`` (with ``user``: only if it is theirs, as a
        "log out this device" button needs). True if a session went. Effective on that
        session's next request, in any worker."""
        users = self._users[self.interface_for(app)]
        return await users.revoke(handle, user=None if user is None else str(user))

    async def revoke_user_sessions(
        self, user: object, *, keep_current: bool = False, app: Quart | None = None
    ) -> int:
        """End every session of ``user`` ("log out everywhere"; with ``keep_current``,
        all but the request's own: "log out all other devices"); returns how many went."""
        users = self._users[self.interface_for(app)]
        keep = _current_handle() if keep_current else None
        if keep_current and keep is None:
            raise RuntimeError("keep_current needs a request whose session is stored")
        return await users.revoke_all(str(user), except_handle=keep)

    @property
    def store(self) -> MaintainedStore:
        """The store of the current (or only) app."""
        return self.store_for()

    @property
    def config(self) -> SessionConfig:
        """The validated settings of the current (or only) app."""
        return self.interface_for().config


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
