"""quartsess: server-side sessions for Quart, stored encrypted in SQL.

The public API is what ``__all__`` lists (a test keeps it equal to the README's list),
plus the store contract in :mod:`quartsess.stores` for those who write a store. Other
modules are internal and may change between releases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from quart import session as _quart_session

from . import signals
from .codec import PayloadCodec
from .config import SessionConfig
from .errors import (
    ConfigurationError,
    InvalidPayload,
    QuartSessError,
    RecentAuthenticationRequired,
    SaveConflict,
    SessionBusy,
    SessionNotSerializable,
    SessionStoreUnavailable,
    SessionTooLarge,
    StoreError,
    TableMissing,
)
from .exclusive import exclusive
from .extension import Session
from .interface import ServerSessionInterface
from .keys import generate_key
from .schema import build_table
from .serializer import SessionSerializer
from .session import ServerSession
from .step_up import recent_authentication_required
from .users import SessionInfo

session = cast(ServerSession, _quart_session)
"""Quart's ``session`` proxy, typed as :class:`ServerSession` so that ``regenerate()``,
``sid`` and ``save()`` type-check; it is the very same object as ``quart.session``."""

if TYPE_CHECKING:
    from .schema import metadata


def __getattr__(name: str) -> Any:
    if name == "metadata":  # built on first use (see quartsess.schema)
        from . import schema

        return schema.metadata
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigurationError",
    "InvalidPayload",
    "PayloadCodec",
    "QuartSessError",
    "RecentAuthenticationRequired",
    "SaveConflict",
    "ServerSession",
    "ServerSessionInterface",
    "Session",
    "SessionBusy",
    "SessionConfig",
    "SessionInfo",
    "SessionNotSerializable",
    "SessionSerializer",
    "SessionStoreUnavailable",
    "SessionTooLarge",
    "StoreError",
    "TableMissing",
    "build_table",
    "exclusive",
    "generate_key",
    "metadata",
    "recent_authentication_required",
    "session",
    "signals",
]
