"""quartsess: server-side sessions for Quart, stored encrypted in SQL."""

from __future__ import annotations

from typing import cast

from quart import session as _quart_session

from .codec import generate_key
from .config import SessionConfig
from .errors import (
    ConfigurationError,
    QuartSessError,
    SessionNotSerializable,
    SessionStoreUnavailable,
    SessionTooLarge,
)
from .extension import Session
from .interface import ServerSessionInterface
from .schema import build_table, metadata
from .session import ServerSession

session = cast(ServerSession, _quart_session)
"""Quart's ``session`` proxy, typed as :class:`ServerSession` so that ``regenerate()``,
``sid`` and ``save()`` type-check; it is the very same object as ``quart.session``."""

__all__ = [
    "ConfigurationError",
    "QuartSessError",
    "ServerSession",
    "ServerSessionInterface",
    "Session",
    "SessionConfig",
    "SessionNotSerializable",
    "SessionStoreUnavailable",
    "SessionTooLarge",
    "build_table",
    "generate_key",
    "metadata",
    "session",
]
