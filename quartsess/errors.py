"""Every error quartsess raises, in one tree under :class:`QuartSessError`."""

from __future__ import annotations

from werkzeug.exceptions import ServiceUnavailable, Unauthorized


class QuartSessError(Exception):
    """Base class of every error quartsess raises: ``except QuartSessError`` catches all."""


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
    """A session value is of a type the tagged JSON serializer cannot store; ``path``
    says where (``"['cart'][2]"``) and ``type_name`` what it is."""

    def __init__(self, path: str, type_name: str) -> None:
        where = f"session{path}" if path else "the session"
        super().__init__(
            f"{where} holds a {type_name}, which cannot be stored: session values must be "
            "JSON types, tuples, bytes, datetimes, UUIDs or Markup (never pickled)"
        )
        self.path = path
        self.type_name = type_name


class InvalidPayload(QuartSessError):
    """A stored payload did not decrypt, or does not belong to the row it was read from."""


#: Seconds a client is told to wait (``Retry-After``) when the session store is down.
RETRY_AFTER_SECONDS = 5


class StoreError(QuartSessError, ServiceUnavailable):
    """The session database failed to answer or cannot be used (a driver error is chained
    as the cause). Every store method raises only this and its subclasses.

    It is an HTTP 503 with ``Retry-After``: raised into a view, the visitor gets that with
    a generic message, never the diagnostic, which ``str(error)`` gives for the log."""

    description = "The session store is temporarily unavailable. Please try again in a moment."
    #: True when the cause was logged where it was found (once for a lasting fault):
    #: whoever catches it need not log it again.
    logged = False

    def __init__(self, message: str | None = None) -> None:
        ServiceUnavailable.__init__(self, retry_after=RETRY_AFTER_SECONDS)
        self.message = message or self.description
        self.args = (self.message,)

    def __str__(self) -> str:
        return self.message


class SessionStoreUnavailable(StoreError):
    """The session database could not be reached or did not answer: a view gets a 503."""


class TableMissing(StoreError):
    """The database answers but has no sessions table, and SESSION_CREATE_TABLE is off."""

    def __init__(self, table: str, database: str) -> None:
        super().__init__(
            f"table missing: the sessions table {table!r} does not exist in {database}; "
            "create it with `quart sessions migrate` (or set SESSION_CREATE_TABLE = True)"
        )
        self.table = table


class DatabaseMissing(TableMissing):
    """The database itself does not exist (a SQLite file that is not there)."""

    def __init__(self, table: str, database: str) -> None:
        StoreError.__init__(
            self,
            f"there is no SQLite database at {database}; create it and the sessions table "
            "with `quart sessions migrate` (or start the app once with SESSION_CREATE_TABLE "
            "= True)",
        )
        self.table = table


class TableOutdated(TableMissing):
    """The sessions table lacks columns this quartsess writes (a table of an older
    release): the migrations have not been run."""

    def __init__(self, table: str, database: str, missing: list[str]) -> None:
        StoreError.__init__(
            self,
            f"table outdated: the sessions table {table!r} in {database} has no column "
            f"{', '.join(missing)}; upgrade it with `quart sessions migrate` (existing "
            "sessions are kept)",
        )
        self.table = table
        self.missing = missing


class SessionBusy(QuartSessError, ServiceUnavailable):
    """Another request of the session held it (``@exclusive``) for longer than
    ``SESSION_EXCLUSIVE_TIMEOUT``: a 503 with ``Retry-After``."""

    description = "This session is busy with another request. Please try again in a moment."

    def __init__(self, waited: float) -> None:
        ServiceUnavailable.__init__(self, retry_after=RETRY_AFTER_SECONDS)
        self.waited = waited
        self.args = (f"another request held the session for over {waited:g} s",)

    def __str__(self) -> str:
        return str(self.args[0])


class RecentAuthenticationRequired(QuartSessError, Unauthorized):
    """A route marked ``@recent_authentication_required`` was asked for by a session
    whose user last proved who they are too long ago (or never): a 401, unless the app
    registered its own answer."""

    description = "Please confirm your password to continue."

    def __init__(self) -> None:
        Unauthorized.__init__(self)


class SaveConflict(QuartSessError):
    """Concurrent writers of one session kept winning, so this save gave up."""

    def __init__(self, attempts: int, session: str) -> None:
        super().__init__(f"{attempts} concurrent updates of session {session} won in a row")
        self.attempts = attempts


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message``, for log lines.

    SQLAlchemy's messages carry no parameters (the engine hides them), so this never
    shows session data."""
    return f"{type(error).__name__}: {error}".splitlines()[0]
