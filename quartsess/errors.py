"""Exceptions raised by quartsess."""

from __future__ import annotations

from werkzeug.exceptions import ServiceUnavailable


class QuartSessError(Exception):
    """Base class for quartsess's own errors."""


class ConfigurationError(QuartSessError, ValueError):
    """A setting is missing or invalid; the message names the setting to fix."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class SessionTooLarge(QuartSessError, ValueError):
    """The serialized session is larger than ``SESSION_MAX_BYTES``; nothing was stored."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the session serializes to {size} bytes, over SESSION_MAX_BYTES={limit}; "
            "nothing was stored (keep large data in your own tables, or raise the limit)"
        )
        self.size = size
        self.limit = limit


class SessionNotSerializable(QuartSessError, TypeError):
    """A session value is of a type the tagged JSON serializer cannot store."""


class InvalidPayload(QuartSessError):
    """A stored payload did not decrypt, or does not belong to the row it was read from."""


class SessionStoreUnavailable(ServiceUnavailable):
    """The session database could not be reached; the request gets a 503."""

    description = "The session store is temporarily unavailable. Please try again in a moment."


class StoreError(QuartSessError):
    """The session database failed to answer (driver errors are chained as the cause)."""
