"""The session object handed to views as ``quart.session``."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any, NoReturn

from quart.sessions import SessionMixin
from werkzeug.datastructures import CallbackDict

from .errors import SessionStoreUnavailable
from .store import StoredSession


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """A dict stored server-side. Behaves like Quart's session (``permanent``,
    ``modified``, ``new``, ``accessed``) and adds :attr:`sid` and :meth:`regenerate`.

    Changes are detected by comparing the serialized content at save time, so
    in-place changes to nested values are saved without setting ``modified``.
    """

    def __init__(
        self,
        initial: Mapping[str, Any] | None = None,
        *,
        sid: str | None = None,
        record: StoredSession | None = None,
        snapshot: bytes | None = None,
    ) -> None:
        def on_update(self: ServerSession) -> None:
            self._on_read()
            self.modified = True

        super().__init__(initial, on_update)
        self.modified = False
        self.accessed = False
        # Our own record of reads: frameworks set `accessed` too (Quart 0.23 whenever its
        # context hands the session out), so only this one decides `Vary: Cookie`.
        self._read = False
        self.new = record is None
        self._sid = sid
        self._record = record
        self._snapshot = snapshot
        self._loaded_permanent = bool(dict.get(self, "_permanent", False))
        self._regenerate_requested = False

    @property
    def sid(self) -> str | None:
        """The cookie ID, or ``None`` until the session is first stored."""
        return self._sid

    def regenerate(self) -> None:
        """Move the data to a new ID when the response is saved, deleting the old row.

        Call it on login (and any privilege change) to defeat session fixation."""
        self._on_read()
        self._regenerate_requested = True
        self.modified = True

    async def save(self) -> None:
        """Store the changes now instead of when the request or websocket ends.

        For long-lived websocket handlers: Quart saves after the handler returns, which
        never happens when the client disconnects first. Only a session that is already
        stored can be saved this way (a new one needs its cookie sent in a response)."""
        from quart import current_app

        persist = getattr(current_app.session_interface, "persist", None)
        if persist is None:
            raise RuntimeError("the app's session interface is not quartsess's")
        await persist(self)

    def _on_read(self) -> None:
        self.accessed = True
        self._read = True

    # Reads mark the session accessed, so responses get ``Vary: Cookie``.
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

    def _contents(self) -> dict[str, Any]:
        """The data, without marking the session accessed."""
        return dict(dict.items(self))

    def _forget_row(self) -> None:
        """The row is gone (deleted here, or by a concurrent logout or login)."""
        self._record = None
        self._sid = None

    def _replace_contents(self, data: Mapping[str, Any]) -> None:
        dict.clear(self)
        dict.update(self, data)


class UnavailableSession(ServerSession):
    """Stands in when the store could not be read: any use answers 503, so a database
    outage never looks like an empty session (a silent logout)."""

    def _on_read(self) -> NoReturn:
        raise SessionStoreUnavailable()
