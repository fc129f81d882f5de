"""Typed, validated settings read once from ``app.config``."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError
from .keys import derive_fernet_key, fernet_keys

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

DEFAULT_TABLE = "quart_sessions"
DEFAULT_PRUNE_INTERVAL = 300.0
DEFAULT_MAX_BYTES = 64 * 1024
DEFAULT_TOUCH_INTERVAL = 60
DEFAULT_SQLITE_FILE = "quartsess.sqlite3"
DEFAULT_USER_KEY = "user_id"
DEFAULT_WEBSOCKET_CHECK_INTERVAL = 1.0
DEFAULT_EXCLUSIVE_TIMEOUT = 10.0
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")

# Our settings, and Quart's own SESSION_* settings (which keep their Quart meaning).
OWN_KEYS = frozenset(
    {
        "SESSION_DB_URL",
        "SESSION_ENGINE_OPTIONS",
        "SESSION_TABLE",
        "SESSION_ENCRYPTION_KEYS",
        "SESSION_IDLE_TIMEOUT",
        "SESSION_ABSOLUTE_TIMEOUT",
        "SESSION_TOUCH_INTERVAL",
        "SESSION_PRUNE_INTERVAL",
        "SESSION_MAX_BYTES",
        "SESSION_CREATE_TABLE",
        "SESSION_REQUIRE_TABLE",
        "SESSION_USER_KEY",
        "SESSION_MAX_PER_USER",
        "SESSION_ANONYMOUS_IDLE_TIMEOUT",
        "SESSION_RECORD_CLIENT",
        "SESSION_WEBSOCKET_CHECK_INTERVAL",
        "SESSION_EXCLUSIVE_TIMEOUT",
        "SESSION_HEADER_NAME",
    }
)
QUART_KEYS = frozenset(
    {
        "SESSION_COOKIE_NAME",
        "SESSION_COOKIE_DOMAIN",
        "SESSION_COOKIE_PATH",
        "SESSION_COOKIE_HTTPONLY",
        "SESSION_COOKIE_SECURE",
        "SESSION_COOKIE_SAMESITE",
        "SESSION_COOKIE_PARTITIONED",
        "SESSION_REFRESH_EACH_REQUEST",
    }
)
KNOWN_KEYS = OWN_KEYS | QUART_KEYS
# Quart's other session-related settings (read by quartsess or by Quart's cookie session).
QUART_SESSION_KEYS = QUART_KEYS | {
    "PERMANENT_SESSION_LIFETIME",
    "SECRET_KEY",
    "SECRET_KEY_FALLBACKS",
}

_SQL_STORE = (
    "sessions live in SQL: set SESSION_DB_URL (default: a SQLite file in the instance folder)"
)
_ASYNC_URL = (
    "pass the app's AsyncEngine as Session(app, engine=...), or set SESSION_DB_URL to the "
    "database's URL with an async driver (e.g. postgresql+asyncpg://...) for an engine of "
    "quartsess's own (SESSION_ENGINE_OPTIONS)"
)
_NO_PINNING = (
    "sessions are not pinned to the client's IP address; store the user at "
    "SESSION_USER_KEY (a change of user renews the ID: a login needs no "
    "session.regenerate()), call session.regenerate() on other privilege changes, and "
    "consider SESSION_ABSOLUTE_TIMEOUT"
)
# Settings of Flask-Session and Quart-Session -> what to do instead with quartsess.
FOREIGN_KEYS: Mapping[str, str] = {
    "SESSION_TYPE": _SQL_STORE,
    "SESSION_REDIS": _SQL_STORE,
    "SESSION_URI": _SQL_STORE,
    "SESSION_MEMCACHED": _SQL_STORE,
    "SESSION_MEMCACHED_HOST": _SQL_STORE,
    "SESSION_MEMCACHED_PORT": _SQL_STORE,
    "SESSION_MONGODB": _SQL_STORE,
    "SESSION_MONGODB_URI": _SQL_STORE,
    "SESSION_MONGODB_DB": _SQL_STORE,
    "SESSION_MONGODB_COLLECT": _SQL_STORE,
    "SESSION_MONGODB_COLLECTION": _SQL_STORE,
    "SESSION_MONGODB_CLIENT_KWARGS": _SQL_STORE,
    "SESSION_MONGODB_SET_CALLBACK": _SQL_STORE,
    "SESSION_DYNAMODB": _SQL_STORE,
    "SESSION_DYNAMODB_TABLE_NAME": _SQL_STORE,
    "SESSION_CACHELIB": _SQL_STORE,
    "SESSION_FILE_DIR": _SQL_STORE,
    "SESSION_FILE_THRESHOLD": _SQL_STORE,
    "SESSION_FILE_MODE": _SQL_STORE,
    "SESSION_SQLALCHEMY": _ASYNC_URL,
    "SESSION_SQLALCHEMY_BIND_KEY": _ASYNC_URL,
    "SESSION_SQLALCHEMY_TABLE": "use SESSION_TABLE (a new table: its layout differs)",
    "SESSION_SQLALCHEMY_SCHEMA": (
        "not supported: the table is in the connection's default schema; name it with SESSION_TABLE"
    ),
    "SESSION_SQLALCHEMY_SEQUENCE": "not needed: rows are keyed by the ID's hash, no sequence",
    "SESSION_PERMANENT": (
        "set session.permanent = True in a view, as with Quart's cookie session (by default "
        "the cookie lasts the browser session; the row expires after SESSION_IDLE_TIMEOUT "
        "either way)"
    ),
    "SESSION_USE_SIGNER": (
        "not needed: cookie IDs are 256-bit random values the server issued, stored only as hashes"
    ),
    "SESSION_ID_LENGTH": "not needed: cookie IDs are always 256-bit random values",
    "SESSION_KEY_PREFIX": "not needed: each app names its own table with SESSION_TABLE",
    "SESSION_SERIALIZATION_FORMAT": "not needed: always Quart's tagged JSON, never pickle",
    "SESSION_CLEANUP_N_REQUESTS": (
        "use SESSION_PRUNE_INTERVAL (seconds): a background task deletes expired rows, one "
        "worker at a time"
    ),
    "SESSION_EXPLICIT": "not needed: a new session is stored only once something is put in it",
    "SESSION_STATIC_FILE": (
        "not needed: a new session is stored, and its cookie sent, only once something is put in it"
    ),
    "SESSION_PROTECTION": _NO_PINNING,
    "SESSION_HIJACK_PROTECTION": _NO_PINNING,
    "SESSION_REVERSE_PROXY": "not needed: quartsess does not read the client's address",
    "SESSION_HIJACK_REVERSE_PROXY": "not needed: quartsess does not read the client's address",
}


@dataclass(frozen=True)
class SessionConfig:
    """quartsess's settings. Build with :meth:`from_mapping`; every field is validated."""

    db_url: URL
    encryption_keys: tuple[bytes, ...] = field(repr=False)
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    table: str = DEFAULT_TABLE
    idle_timeout: int = int(timedelta(days=31).total_seconds())
    absolute_timeout: int | None = None
    touch_interval: int = DEFAULT_TOUCH_INTERVAL
    prune_interval: float = DEFAULT_PRUNE_INTERVAL
    max_bytes: int = DEFAULT_MAX_BYTES
    create_table: bool = True
    require_table: bool = False
    user_key: str | None = DEFAULT_USER_KEY
    max_per_user: int | None = None
    anonymous_idle_timeout: int | None = None
    record_client: bool = True
    websocket_check_interval: float | None = DEFAULT_WEBSOCKET_CHECK_INTERVAL
    exclusive_timeout: float = DEFAULT_EXCLUSIVE_TIMEOUT
    header_name: str | None = None
    #: The app's own engine (``Session(app, engine=...)``), whose pool the sessions use;
    #: ``db_url`` is then its URL. ``None``: the store makes its own from ``db_url``.
    engine: AsyncEngine | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        engine = "the app's" if self.engine is not None else None
        return (
            f"SessionConfig(db_url={self.db_url.render_as_string(hide_password=True)!r}, "
            f"engine={engine}, "
            f"table={self.table!r}, keys={len(self.encryption_keys)} (hidden), "
            f"idle_timeout={self.idle_timeout}, absolute_timeout={self.absolute_timeout}, "
            f"touch_interval={self.touch_interval}, prune_interval={self.prune_interval}, "
            f"max_bytes={self.max_bytes}, create_table={self.create_table}, "
            f"require_table={self.require_table}, "
            f"user_key={self.user_key!r}, max_per_user={self.max_per_user}, "
            f"anonymous_idle_timeout={self.anonymous_idle_timeout}, "
            f"record_client={self.record_client}, "
            f"websocket_check_interval={self.websocket_check_interval}, "
            f"exclusive_timeout={self.exclusive_timeout}, header_name={self.header_name!r})"
        )

    @property
    def backend(self) -> str:
        return self.db_url.get_backend_name()

    @classmethod
    def from_mapping(
        cls,
        config: Mapping[str, Any],
        *,
        instance_path: str,
        engine: AsyncEngine | None = None,
    ) -> SessionConfig:
        """Read and validate settings from an ``app.config``-like mapping; with ``engine``
        (the app's own ``AsyncEngine``), ``SESSION_DB_URL`` may only name its database
        and ``SESSION_ENGINE_OPTIONS`` must be empty."""
        keys = _encryption_keys(config)
        idle = _seconds(
            config,
            "SESSION_IDLE_TIMEOUT",
            config.get("PERMANENT_SESSION_LIFETIME", timedelta(days=31)),
        )
        if idle is None or idle <= 0:
            raise ConfigurationError(
                "SESSION_IDLE_TIMEOUT", "must be a positive number of seconds or a timedelta"
            )
        absolute = _seconds(config, "SESSION_ABSOLUTE_TIMEOUT", None)
        if absolute is not None and absolute <= 0:
            raise ConfigurationError(
                "SESSION_ABSOLUTE_TIMEOUT", "must be positive, or None for no absolute limit"
            )
        anonymous = _seconds(config, "SESSION_ANONYMOUS_IDLE_TIMEOUT", None)
        if anonymous is not None and anonymous <= 0:
            raise ConfigurationError(
                "SESSION_ANONYMOUS_IDLE_TIMEOUT",
                "must be a positive number of seconds or a timedelta (None: the idle timeout)",
            )
        shortest = min(idle, anonymous or idle)
        touch = _seconds(
            config, "SESSION_TOUCH_INTERVAL", min(DEFAULT_TOUCH_INTERVAL, shortest // 2)
        )
        if touch is None or touch < 0 or touch >= shortest:
            raise ConfigurationError(
                "SESSION_TOUCH_INTERVAL",
                f"must be at least 0 and shorter than the idle timeouts ({shortest} s)",
            )
        prune = _number(config, "SESSION_PRUNE_INTERVAL", DEFAULT_PRUNE_INTERVAL)
        if prune < 0:
            raise ConfigurationError("SESSION_PRUNE_INTERVAL", "must be >= 0 (0 turns it off)")
        max_bytes = _number(config, "SESSION_MAX_BYTES", DEFAULT_MAX_BYTES)
        if max_bytes <= 0 or max_bytes != int(max_bytes):
            raise ConfigurationError("SESSION_MAX_BYTES", "must be a positive whole number")
        table = config.get("SESSION_TABLE") or DEFAULT_TABLE
        if not isinstance(table, str) or _TABLE_NAME.fullmatch(table) is None:
            raise ConfigurationError(
                "SESSION_TABLE",
                "must be a table name of ASCII letters, digits and underscores, not starting "
                "with a digit, at most 48 characters (its index name adds 15)",
            )
        options = config.get("SESSION_ENGINE_OPTIONS") or {}
        if not isinstance(options, Mapping):
            raise ConfigurationError(
                "SESSION_ENGINE_OPTIONS", "must be a dict of keyword arguments"
            )
        db_url = _database_url(config, instance_path)
        if engine is not None:
            db_url = _engine_url(config, engine, options)
        create = config.get("SESSION_CREATE_TABLE", True)
        if not isinstance(create, bool):
            raise ConfigurationError("SESSION_CREATE_TABLE", "must be True or False")
        require = config.get("SESSION_REQUIRE_TABLE", False)
        if not isinstance(require, bool):
            raise ConfigurationError("SESSION_REQUIRE_TABLE", "must be True or False")
        user_key = config.get("SESSION_USER_KEY", DEFAULT_USER_KEY)
        if user_key is not None and (not isinstance(user_key, str) or not user_key):
            raise ConfigurationError(
                "SESSION_USER_KEY", "must be the session key naming the user, or None (off)"
            )
        max_per_user = config.get("SESSION_MAX_PER_USER")
        if max_per_user is not None and (
            isinstance(max_per_user, bool) or not isinstance(max_per_user, int) or max_per_user < 1
        ):
            raise ConfigurationError(
                "SESSION_MAX_PER_USER", "must be a whole number of at least 1, or None"
            )
        websocket_check = config.get(
            "SESSION_WEBSOCKET_CHECK_INTERVAL", DEFAULT_WEBSOCKET_CHECK_INTERVAL
        )
        if websocket_check is not None and (
            isinstance(websocket_check, bool)
            or not isinstance(websocket_check, int | float)
            or not math.isfinite(websocket_check)
            or websocket_check <= 0
        ):
            raise ConfigurationError(
                "SESSION_WEBSOCKET_CHECK_INTERVAL",
                "must be a positive number of seconds, or None to turn the checks off",
            )
        exclusive_timeout = _number(config, "SESSION_EXCLUSIVE_TIMEOUT", DEFAULT_EXCLUSIVE_TIMEOUT)
        if exclusive_timeout <= 0:
            raise ConfigurationError(
                "SESSION_EXCLUSIVE_TIMEOUT",
                "must be a positive number of seconds (how long an @exclusive request waits)",
            )
        header_name = _header_name(config.get("SESSION_HEADER_NAME"))
        record_client = config.get("SESSION_RECORD_CLIENT", True)
        if not isinstance(record_client, bool):
            raise ConfigurationError("SESSION_RECORD_CLIENT", "must be True or False")
        return cls(
            db_url=db_url,
            encryption_keys=tuple(keys),
            engine_options=dict(options),
            table=table,
            idle_timeout=idle,
            absolute_timeout=absolute,
            touch_interval=touch,
            prune_interval=float(prune),
            max_bytes=int(max_bytes),
            create_table=create,
            require_table=require,
            user_key=user_key,
            max_per_user=max_per_user,
            anonymous_idle_timeout=anonymous,
            record_client=record_client,
            websocket_check_interval=None if websocket_check is None else float(websocket_check),
            exclusive_timeout=exclusive_timeout,
            header_name=header_name,
            engine=engine,
        )


#: Most edits (a letter added, dropped, replaced, or two swapped) that make a typo.
TYPO_DISTANCE = 2


def misspelled_keys(config: Iterable[str]) -> list[tuple[str, str]]:
    """``(unknown, suggestion)`` for upper-case keys that look like typos of quartsess's
    settings or of Quart's session-related ones, whether or not they contain ``SESSION``
    (``SESION_TABLE``, ``SECERT_KEY``, ``PERMANENT_SESSION_LIFETIM``).

    A typo is at most :data:`TYPO_DISTANCE` edits away (a letter added, dropped,
    replaced, or two neighbours swapped): a name that only shares words with ours
    (``JWT_SECRET_KEY``, ``REMEMBER_COOKIE_SECURE``) is another setting, not a typo.
    Quart's and Flask's own settings are never reported."""
    known = sorted(KNOWN_KEYS | QUART_SESSION_KEYS)
    found = []
    for key in config:
        if not isinstance(key, str) or not key.isupper():
            continue
        if key in KNOWN_KEYS or key in QUART_SESSION_KEYS or key in FOREIGN_KEYS:
            continue
        if key in _framework_keys():
            continue
        close = [
            (distance, name)
            for name in known
            if (distance := _edit_distance(key, name, TYPO_DISTANCE)) <= TYPO_DISTANCE
        ]
        if close:
            found.append((key, min(close)[1]))
    return found


def _framework_keys() -> frozenset[str]:
    """Quart's default settings (most of them Flask's too): never a typo of ours."""
    from quart import Quart

    return frozenset(Quart.default_config)


def _edit_distance(a: str, b: str, bound: int) -> int:
    """The optimal string alignment distance of ``a`` and ``b`` (insertions, deletions,
    substitutions, swaps of neighbours), or ``bound + 1`` once it must exceed ``bound``."""
    if abs(len(a) - len(b)) > bound:
        return bound + 1
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        if min(current) > bound:
            return bound + 1
        before, previous = previous, current
    return previous[-1]


def foreign_keys(config: Iterable[str]) -> list[tuple[str, str]]:
    """``(setting, advice)`` for settings of Flask-Session or Quart-Session: what quartsess
    does instead."""
    return [(key, FOREIGN_KEYS[key]) for key in config if key in FOREIGN_KEYS]


def setting_warnings(config: Iterable[str]) -> list[str]:
    """One start-up warning per foreign or misspelled key of an ``app.config``."""
    keys = list(config)
    return [
        f"{key} is a Flask-Session/Quart-Session setting, ignored by quartsess; {advice}"
        for key, advice in foreign_keys(keys)
    ] + [
        f"{key} is not a setting quartsess or Quart knows; did you mean {suggestion}?"
        for key, suggestion in misspelled_keys(keys)
    ]


def _encryption_keys(config: Mapping[str, Any]) -> list[bytes]:
    configured = config.get("SESSION_ENCRYPTION_KEYS")
    if configured:
        if isinstance(configured, str | bytes):
            text = configured.decode() if isinstance(configured, bytes) else configured
            configured = [part for part in text.replace(",", " ").split() if part]
        if not isinstance(configured, list | tuple):
            raise ConfigurationError(
                "SESSION_ENCRYPTION_KEYS",
                "must be a list of Fernet keys (newest first) or a comma-separated string",
            )
        for index, value in enumerate(configured):
            try:
                Fernet(fernet_keys([value])[0])
            except (ValueError, TypeError):
                raise ConfigurationError(
                    "SESSION_ENCRYPTION_KEYS",
                    f"key #{index} is not a valid Fernet key (32 url-safe base64-encoded "
                    "bytes); create one with `quart sessions gen-key`",
                ) from None
        return fernet_keys(configured)
    return derived_keys(config)


def derived_keys(config: Mapping[str, Any]) -> list[bytes]:
    """The Fernet keys derived from ``SECRET_KEY`` and then each of
    ``SECRET_KEY_FALLBACKS``: what encrypts and opens sessions while
    ``SESSION_ENCRYPTION_KEYS`` is unset (``quart sessions derived-key`` prints them)."""
    secret = config.get("SECRET_KEY")
    if not secret:
        raise ConfigurationError(
            "SECRET_KEY",
            "quartsess needs app.secret_key (SECRET_KEY) to derive its encryption key, "
            "or explicit Fernet keys in SESSION_ENCRYPTION_KEYS",
        )
    if not isinstance(secret, str | bytes):
        raise ConfigurationError("SECRET_KEY", "must be a str or bytes")
    fallbacks = config.get("SECRET_KEY_FALLBACKS") or []
    if (
        isinstance(fallbacks, str | bytes)
        or not isinstance(fallbacks, list | tuple)
        or not all(isinstance(old, str | bytes) and old for old in fallbacks)
    ):
        raise ConfigurationError(
            "SECRET_KEY_FALLBACKS", "must be a list of old secret keys (non-empty str or bytes)"
        )
    return [derive_fernet_key(value) for value in (secret, *fallbacks) if value]


# An HTTP field name (RFC 9110's token), and the ones a session ID must not go in.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NOT_FOR_SESSIONS = frozenset(
    {"cookie", "set-cookie", "authorization", "proxy-authorization", "host", "content-length",
     "content-type", "transfer-encoding", "connection", "vary", "cache-control"}
)  # fmt: skip


def _header_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or _FIELD_NAME.fullmatch(value) is None:
        raise ConfigurationError(
            "SESSION_HEADER_NAME",
            "must be an HTTP header name such as X-Session-Token, or None (off)",
        )
    if value.lower() in _NOT_FOR_SESSIONS:
        raise ConfigurationError(
            "SESSION_HEADER_NAME",
            f"{value} has a meaning of its own: use a header of your own, such as "
            "X-Session-Token (a session ID is not a Bearer token)",
        )
    return value


def _seconds(config: Mapping[str, Any], name: str, default: Any) -> int | None:
    value = config.get(name, default)
    if value is None:
        return None
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(name, "must be a timedelta or a number of seconds")
    if not math.isfinite(value):
        raise ConfigurationError(name, "must be a finite number of seconds")
    return math.floor(value)


def _number(config: Mapping[str, Any], name: str, default: float) -> float:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(name, "must be a number")
    if not math.isfinite(value):
        raise ConfigurationError(name, "must be a finite number")
    return float(value)


def _database_url(config: Mapping[str, Any], instance_path: str) -> URL:
    raw = config.get("SESSION_DB_URL")
    if not raw:
        path = os.path.join(instance_path, DEFAULT_SQLITE_FILE)
        return URL.create("sqlite+aiosqlite", database=path)
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigurationError(
            "SESSION_DB_URL",
            "is not a database URL; expected e.g. sqlite:///path/sessions.db or "
            "postgresql+asyncpg://user@host/db",
        ) from None
    return url


def _engine_url(config: Mapping[str, Any], engine: object, options: Mapping[str, Any]) -> URL:
    """The URL of the app's ``engine``, after checking that it is an ``AsyncEngine`` and
    that no setting says otherwise."""
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine  # already loaded if the app made one

    if isinstance(engine, Engine):
        raise ConfigurationError(
            "engine", "is a synchronous Engine; pass an AsyncEngine (create_async_engine)"
        )
    if not isinstance(engine, AsyncEngine):
        raise ConfigurationError(
            "engine", f"must be a SQLAlchemy AsyncEngine, not {type(engine).__name__}"
        )
    url: URL = engine.url
    if options:
        raise ConfigurationError(
            "SESSION_ENGINE_OPTIONS",
            "must be empty when the sessions use the app's engine (Session(app, "
            "engine=...)): its pool, time-outs and driver arguments are the engine's; "
            "set them where the engine is created",
        )
    named = _database_url(config, "") if config.get("SESSION_DB_URL") else url
    if named != url:
        shown = named.render_as_string(hide_password=True)
        raise ConfigurationError(
            "SESSION_DB_URL",
            f"names {shown}, but the sessions use the app's engine on "
            f"{url.render_as_string(hide_password=True)}; remove SESSION_DB_URL (or "
            "make it the engine's URL)",
        )
    return url
