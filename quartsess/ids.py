"""Session IDs: generation, shape check, and the hash that is stored instead of the ID."""

from __future__ import annotations

import hashlib
import re
import secrets

ID_BYTES = 32  # 256 bits of randomness
_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def new_session_id() -> str:
    """A fresh 256-bit URL-safe token (43 characters)."""
    return secrets.token_urlsafe(ID_BYTES)


def is_well_formed(value: str) -> bool:
    """Whether ``value`` has the exact shape of an ID that :func:`new_session_id` returns."""
    return _ID_SHAPE.fullmatch(value) is not None


def hash_session_id(session_id: str) -> str:
    """The hex SHA-256 of an ID: the only form in which IDs reach the database or the log."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def log_id(id_hash: str) -> str:
    """A short prefix of the ID hash, enough to correlate log lines."""
    return id_hash[:12]


def new_handle() -> str:
    """A fresh session handle: 128 random bits, URL-safe (22 characters). It names a
    session for listing and revoking, stays the same across new IDs, and is safe to show."""
    return secrets.token_urlsafe(16)
