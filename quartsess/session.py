"""The session object handed to views as ``quart.session``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from quart.sessions import SessionMixin
from werkzeug.datastructures import CallbackDict

from .clock import Clock
from .errors import SessionStoreUnavailable
from .owners import AUTHENTICATED_AT_KEY, Client
from .saving import Loaded, SaveOutcome

if TYPE_CHECKING:
    from .holds import Hold

Persist = Callable[["ServerSession"], Awaitable[None]]


@dataclass(slots=True)
class _State:
    """Everything a session knows besides its data; written only in this module."""

    loaded: Loaded | None
    persist: Persist | None
    client: Client | None = None
    loaded_permanent: bool = False
    regenerate_requested: bool = False
    cleared: bool = False
    read: bool = False
    unstorable: bool = False
    hold: Hold | None = None
    authenticated_at: int | None = None
    clock: Clock = time.time
    via_header: bool = False
    ended_meanwhile: bool = False


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """A dict stored server-side. Behaves like Quart's session (``permanent``,
    ``modified``, ``new``, ``accessed``) and adds :attr:`sid`, :meth:`regenerate` and
    :meth:`save`.

    Changes are detected by comparing the serialized content at save time, so
    in-place changes to nested values are saved without setting ``modified``.
    """

    def __init__(
        self,
        initial: Mapping[str, Any] | None = None,
        *,
        loaded: Loaded | None = None,
        persist: Persist | None = None,
        client: Client | None = None,
        clock: Clock = time.time,
        via_header: bool = False,
    ) -> None:
        def on_update(self: ServerSession) -> None:
            self._on_read()
            self.modified = True

        super().__init__(initial, on_update)  # a copy of ``initial``
        # Kept beside the data, not in it: the app reads it, never assigns it.
        # (dict.pop: taking it out is not a change of the session.)
        stamp = dict.pop(self, AUTHENTICATED_AT_KEY, None)
        self.modified = False
        self.accessed = False
        self.new = loaded is None
        self._state = _State(
            loaded,
            persist,
            client,
            self._stored_permanent(),
            authenticated_at=None if stamp is None else _stamp(stamp),
            clock=clock,
            via_header=via_header,
        )

    @property
    def sid(self) -> str | None:
        """The cookie ID, or ``None`` until the session is first stored."""
        loaded = self._state.loaded
        return None if loaded is None else loaded.sid

    @property
    def handle(self) -> str | None:
        """The session's handle (see :class:`~quartsess.SessionInfo`), or ``None``
        until the session is first stored. Stable across new IDs; safe to show."""
        loaded = self._state.loaded
        return None if loaded is None else loaded.record.handle

    @property
    def via_header(self) -> bool:
        """Whether the request named its session in ``SESSION_HEADER_NAME`` (an API
        client) rather than in the cookie: the response answers in that header."""
        return self._state.via_header

    @property
    def authenticated_at(self) -> datetime | None:
        """When the session's user last proved who they are: set when the session became
        bound to a user (a login at ``SESSION_USER_KEY``) and by
        :meth:`mark_authenticated`; ``None`` for a session bound to no user. Survives new
        IDs and merges; assigning a session key cannot set it."""
        stamp = self._state.authenticated_at
        return None if stamp is None else datetime.fromtimestamp(stamp, UTC)

    def mark_authenticated(self) -> None:
        """The app has just checked the user's password (or second factor) again:
        :attr:`authenticated_at` becomes now, saved with the response. A session bound to
        no user keeps no such time."""
        self._state.authenticated_at = int(self._state.clock())
        self.modified = True

    def regenerate(self) -> None:
        """Move the data to a new ID when the response is saved, deleting the old row.

        A login needs no call when the user is stored at ``SESSION_USER_KEY``: a change of
        the user there renews the ID by itself. Call it on other privilege changes (and on
        login if the app keeps the user where ``SESSION_USER_KEY`` does not point), to
        defeat session fixation."""
        self._on_read()
        self._state.regenerate_requested = True
        self.modified = True

    async def save(self) -> None:
        """Store the changes now instead of when the request or websocket ends.

        For long-lived websocket handlers: Quart saves after the handler returns, which
        never happens when the client disconnects first. Only a session that is already
        stored can be saved this way (a new one needs its cookie sent in a response).
        Raises :class:`~quartsess.SessionStoreUnavailable` if the store cannot be written."""
        persist = self._state.persist
        if persist is None:
            raise RuntimeError("this session was not opened by quartsess's session interface")
        await persist(self)

    # -- for the session interface: what the save needs, and what it did ------------------

    @property
    def loaded(self) -> Loaded | None:
        """The row this session was loaded from or last saved to (``None``: not stored)."""
        return self._state.loaded

    @property
    def permanence_changed(self) -> bool:
        """Whether ``permanent`` differs from what the row holds (the cookie must follow)."""
        return self._stored_permanent() != self._state.loaded_permanent

    def _stored_permanent(self) -> bool:
        return bool(dict.get(self, "_permanent", False))

    @property
    def client(self) -> Client | None:
        """What is recorded of this request's client (``None``: recording is off)."""
        return self._state.client

    @property
    def regenerate_requested(self) -> bool:
        """Whether the save must move the data to a new ID: :meth:`regenerate` was
        called, or the session was cleared and then given new data (a new session)."""
        state = self._state
        return state.regenerate_requested or (state.cleared and dict.__len__(self) > 0)

    @property
    def read_by_app(self) -> bool:
        """Whether the app read or changed the session (so the response varies on the
        cookie). quartsess's own record: frameworks may set ``accessed`` themselves."""
        return self._state.read

    @property
    def unstorable(self) -> bool:
        """Whether a save of this session already failed for its content (too large, or
        a value that cannot be serialized): a second attempt fails the same way."""
        return self._state.unstorable

    def mark_unstorable(self) -> None:
        self._state.unstorable = True

    @property
    def hold(self) -> Hold | None:
        """The hold an ``@exclusive`` route took on the row (released after the save)."""
        return self._state.hold

    def held(
        self, hold: Hold | None, fresh: tuple[Loaded, dict[str, Any]] | Literal[False] | None
    ) -> None:
        """Take on a hold and what it found, before the view runs: the newer row and the
        content to use (this request's changes so far merged onto the newer row's);
        ``False``, what was loaded is current; ``None``, the session ended meanwhile:
        the view sees an empty session, and the request stores nothing."""
        state = self._state
        state.hold = hold
        if fresh is False:
            return
        if fresh is None:
            self._adopt({})
            state.loaded = None
            state.ended_meanwhile = True
            self.new = True
            return
        loaded, data = fresh
        self._adopt(data)
        state.loaded = loaded
        state.loaded_permanent = self._stored_permanent()

    @property
    def ended_meanwhile(self) -> bool:
        """Whether the session ended while an ``@exclusive`` request waited for it (the
        request then stores nothing, and leaves the cookie alone)."""
        return self._state.ended_meanwhile

    def take_hold(self) -> Hold | None:
        """The hold to release now (``None`` if there is none or it was taken already)."""
        hold, self._state.hold = self._state.hold, None
        return hold

    def contents(self) -> dict[str, Any]:
        """A copy of the data as it is stored (with :attr:`authenticated_at`), without
        counting as a read."""
        data = dict(dict.items(self))
        stamp = self._state.authenticated_at
        if stamp is not None:
            data[AUTHENTICATED_AT_KEY] = stamp
        elif AUTHENTICATED_AT_KEY in data:
            del data[AUTHENTICATED_AT_KEY]  # assigned by the app: not a stamp of ours
        return data

    def _adopt(self, data: Mapping[str, Any]) -> None:
        stored = dict(data)
        self._state.authenticated_at = _stamp(stored.pop(AUTHENTICATED_AT_KEY, None))
        dict.clear(self)
        dict.update(self, stored)

    def apply_save(self, outcome: SaveOutcome) -> None:
        """Take on what a save did: the row it wrote (or that it has none), and content
        merged from a concurrent save (or stamped by the save)."""
        state = self._state
        if outcome.merged is not None:
            self._adopt(outcome.merged)
        state.loaded = outcome.loaded
        state.regenerate_requested = state.cleared = False
        state.loaded_permanent = self._stored_permanent()

    # -- reads mark the session accessed, so responses get ``Vary: Cookie`` ----------------

    def _on_read(self) -> None:
        self._state.read = True
        self.accessed = True

    def clear(self) -> None:
        """Empty the session. Saved as a logout (row and cookie deleted); new data set
        afterwards in the same request is stored under a new ID, as after a login."""
        self._state.cleared = True
        self._state.authenticated_at = None
        super().clear()

    def __getitem__(self, key: str) -> Any:
        self._on_read()
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._on_read()
        return super().get(key, default)

    def pop(self, key: str, *args: Any) -> Any:
        self._on_read()
        return super().pop(key, *args)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._on_read()
        return super().setdefault(key, default)

    def __contains__(self, key: object) -> bool:
        self._on_read()
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self._on_read()
        return super().__iter__()

    def __len__(self) -> int:
        self._on_read()
        return super().__len__()

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        self._on_read()
        return super().keys()

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        self._on_read()
        return super().values()

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        self._on_read()
        return super().items()

    def copy(self) -> dict[str, Any]:
        self._on_read()
        return dict(dict.items(self))

    def __repr__(self) -> str:
        # Never the content: session data often holds personal data or tokens.
        return f"<{type(self).__name__} keys={dict.__len__(self)} new={self.new}>"


def _stamp(value: object) -> int | None:
    """A stored authentication time (epoch seconds), or ``None`` if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


class UnavailableSession(ServerSession):
    """Stands in when the store could not be read (the interface's null session): any
    use answers 503, so a database outage never looks like an empty session (a silent
    logout)."""

    def _on_read(self) -> NoReturn:
        raise SessionStoreUnavailable()
