"""Start-up validation: bad configuration fails in Session(app) with the setting's name."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import flask
import pytest
from quart import Quart

from quartsess import ConfigurationError, Session, SessionConfig, generate_key
from quartsess.config import FOREIGN_KEYS, misspelled_keys

SQLITE = "sqlite+aiosqlite:///{}"


def build(tmp_path: Path, **config: Any) -> Quart:
    app = Quart(__name__)
    app.config.update(SECRET_KEY="s" * 32, SESSION_DB_URL=SQLITE.format(tmp_path / "s.db"))
    app.config.update(config)
    return app


@pytest.mark.parametrize(
    ("config", "setting", "hint"),
    [
        ({"SECRET_KEY": None}, "SECRET_KEY", "SESSION_ENCRYPTION_KEYS"),
        ({"SESSION_ENCRYPTION_KEYS": ["not-a-key"]}, "SESSION_ENCRYPTION_KEYS", "gen-key"),
        ({"SESSION_ENCRYPTION_KEYS": 42}, "SESSION_ENCRYPTION_KEYS", "list"),
        ({"SESSION_DB_URL": "oracle://scott@db/orcl"}, "SESSION_DB_URL", "not supported"),
        ({"SESSION_DB_URL": "postgresql://u@h/db"}, "SESSION_DB_URL", "asyncpg"),
        ({"SESSION_DB_URL": "mysql+pymysql://u@h/db"}, "SESSION_DB_URL", "asyncmy"),
        ({"SESSION_DB_URL": "no url at all"}, "SESSION_DB_URL", "database URL"),
        ({"SESSION_IDLE_TIMEOUT": -5}, "SESSION_IDLE_TIMEOUT", "positive"),
        ({"SESSION_IDLE_TIMEOUT": "1h"}, "SESSION_IDLE_TIMEOUT", "timedelta"),
        ({"SESSION_ABSOLUTE_TIMEOUT": 0}, "SESSION_ABSOLUTE_TIMEOUT", "positive"),
        ({"SESSION_TOUCH_INTERVAL": 10**9}, "SESSION_TOUCH_INTERVAL", "shorter"),
        ({"SESSION_PRUNE_INTERVAL": -1}, "SESSION_PRUNE_INTERVAL", ">= 0"),
        ({"SESSION_MAX_BYTES": 0}, "SESSION_MAX_BYTES", "positive"),
        ({"SESSION_TABLE": "drop table; --"}, "SESSION_TABLE", "letters"),
        ({"SESSION_ENGINE_OPTIONS": "pool_size=5"}, "SESSION_ENGINE_OPTIONS", "dict"),
        ({"SESSION_CREATE_TABLE": "no"}, "SESSION_CREATE_TABLE", "True or False"),
        ({"SECRET_KEY_FALLBACKS": "old"}, "SECRET_KEY_FALLBACKS", "list"),
        ({"SECRET_KEY_FALLBACKS": [123]}, "SECRET_KEY_FALLBACKS", "non-empty"),
        ({"SESSION_ENCRYPTION_KEYS": ["clé-non-ascii"]}, "SESSION_ENCRYPTION_KEYS", "Fernet"),
        ({"SESSION_IDLE_TIMEOUT": float("inf")}, "SESSION_IDLE_TIMEOUT", "finite"),
        ({"SESSION_PRUNE_INTERVAL": float("nan")}, "SESSION_PRUNE_INTERVAL", "finite"),
        ({"SESSION_MAX_BYTES": float("nan")}, "SESSION_MAX_BYTES", "finite"),
        ({"SESSION_TOUCH_INTERVAL": -0.5}, "SESSION_TOUCH_INTERVAL", "at least 0"),
        ({"SESSION_TABLE": "1sessions"}, "SESSION_TABLE", "digit"),
        ({"SESSION_TABLE": "séssions"}, "SESSION_TABLE", "ASCII"),
        ({"SESSION_TABLE": "s" * 49}, "SESSION_TABLE", "48"),
        ({"SESSION_DB_URL": "postgresql+psycopg://u@h/db"}, "SESSION_DB_URL", "asyncpg"),
        ({"SESSION_DB_URL": "sqlite+pysqlcipher:///s.db"}, "SESSION_DB_URL", "sqlite:///path"),
        (
            {
                "SESSION_DB_URL": "postgresql+asyncpg://u@h/db",
                "SESSION_ENGINE_OPTIONS": {"pool_size": 1, "max_overflow": 1},
            },
            "SESSION_ENGINE_OPTIONS",
            "at least 3",
        ),
        (
            {
                "SESSION_DB_URL": "postgresql+asyncpg://u@h/db",
                "SESSION_ENGINE_OPTIONS": {"pool_size": "five"},
            },
            "SESSION_ENGINE_OPTIONS",
            "whole numbers",
        ),
        ({"SESSION_ENGINE_OPTIONS": {"pool_sise": 5}}, "SESSION_ENGINE_OPTIONS", "pool_sise"),
        (
            {
                "SESSION_DB_URL": "postgresql+asyncpg://u@h/db",
                "SESSION_ENGINE_OPTIONS": {"bogus": 1},
            },
            "SESSION_ENGINE_OPTIONS",
            "'bogus'",
        ),
    ],
)
def test_bad_configuration_fails_at_start_up_naming_the_setting(
    tmp_path: Path, config: dict[str, Any], setting: str, hint: str
) -> None:
    app = build(tmp_path, **config)
    with pytest.raises(ConfigurationError) as raised:
        Session(app)
    assert raised.value.setting == setting
    assert str(raised.value).startswith(setting)
    assert hint in str(raised.value)
    assert "quartsess" not in app.extensions


def test_a_missing_driver_is_reported_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    app = build(tmp_path, SESSION_DB_URL="postgresql+asyncpg://u@h/db")
    with pytest.raises(ConfigurationError, match=r"quartsess\[postgresql\]"):
        Session(app)


def test_timeouts_accept_timedelta_and_seconds(tmp_path: Path) -> None:
    app = build(
        tmp_path,
        SESSION_IDLE_TIMEOUT=timedelta(minutes=30),
        SESSION_ABSOLUTE_TIMEOUT=86400,
        SESSION_ENCRYPTION_KEYS=[key := generate_key()],
    )
    config = SessionConfig.from_mapping(app.config, instance_path=app.instance_path)
    assert (config.idle_timeout, config.absolute_timeout) == (1800, 86400)
    assert config.encryption_keys == (key.encode(),)


def test_idle_timeout_defaults_to_the_permanent_session_lifetime(tmp_path: Path) -> None:
    app = build(tmp_path, PERMANENT_SESSION_LIFETIME=timedelta(hours=2))
    config = SessionConfig.from_mapping(app.config, instance_path=app.instance_path)
    assert config.idle_timeout == 7200


def test_default_database_is_sqlite_in_the_instance_folder(tmp_path: Path) -> None:
    app = Quart(__name__, instance_path=str(tmp_path / "instance"))
    app.secret_key = "s" * 32
    config = SessionConfig.from_mapping(app.config, instance_path=app.instance_path)
    assert config.db_url.drivername == "sqlite+aiosqlite"
    assert config.db_url.database == str(tmp_path / "instance" / "quartsess.sqlite3")


def test_repr_hides_keys_and_passwords(tmp_path: Path) -> None:
    key = generate_key()
    app = build(
        tmp_path,
        SESSION_ENCRYPTION_KEYS=[key],
        SESSION_DB_URL="postgresql+asyncpg://user:pa55word@db/app",
    )
    text = repr(SessionConfig.from_mapping(app.config, instance_path=app.instance_path))
    assert key not in text and "pa55word" not in text


def test_misspelled_settings_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = build(tmp_path, SESSION_IDLE_TIMOUT=60, SESSION_TABEL="x", SESSION_MY_OWN_THING=1)
    with caplog.at_level(logging.WARNING, logger="quartsess"):
        Session(app)
    messages = [record.getMessage() for record in caplog.records]
    assert any("SESSION_IDLE_TIMOUT" in m and "SESSION_IDLE_TIMEOUT?" in m for m in messages)
    assert any("SESSION_TABEL" in m and "SESSION_TABLE?" in m for m in messages)
    assert not any("SESSION_MY_OWN_THING" in m for m in messages)


# Flask-Session and Quart-Session settings -> a word the warning must name.
FOREIGN = {
    "SESSION_TYPE": "SESSION_DB_URL",
    "SESSION_PERMANENT": "session.permanent",
    "SESSION_USE_SIGNER": "not needed",
    "SESSION_KEY_PREFIX": "SESSION_TABLE",
    "SESSION_REDIS": "SESSION_DB_URL",
    "SESSION_URI": "SESSION_DB_URL",
    "SESSION_MEMCACHED": "SESSION_DB_URL",
    "SESSION_MONGODB": "SESSION_DB_URL",
    "SESSION_MONGODB_URI": "SESSION_DB_URL",
    "SESSION_MONGODB_COLLECT": "SESSION_DB_URL",
    "SESSION_FILE_DIR": "SESSION_DB_URL",
    "SESSION_CACHELIB": "SESSION_DB_URL",
    "SESSION_DYNAMODB": "SESSION_DB_URL",
    "SESSION_SQLALCHEMY": "SESSION_DB_URL",
    "SESSION_SQLALCHEMY_TABLE": "SESSION_TABLE",
    "SESSION_SQLALCHEMY_SCHEMA": "not supported",
    "SESSION_ID_LENGTH": "256-bit",
    "SESSION_SERIALIZATION_FORMAT": "tagged JSON",
    "SESSION_CLEANUP_N_REQUESTS": "SESSION_PRUNE_INTERVAL",
    "SESSION_EXPLICIT": "not needed",
    "SESSION_PROTECTION": "regenerate",
    "SESSION_REVERSE_PROXY": "not needed",
}


def warnings_for(tmp_path: Path, caplog: pytest.LogCaptureFixture, **config: Any) -> list[str]:
    app = build(tmp_path, **config)
    with caplog.at_level(logging.WARNING, logger="quartsess"):
        Session(app)
    return [r.getMessage() for r in caplog.records if r.name == "quartsess"]


@pytest.mark.parametrize(("setting", "equivalent"), FOREIGN.items())
def test_a_flask_session_or_quart_session_setting_gets_its_quartsess_equivalent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, setting: str, equivalent: str
) -> None:
    messages = warnings_for(tmp_path, caplog, **{setting: "x"})
    assert len(messages) == 1, messages
    (message,) = messages
    assert message.startswith(f"{setting} is a Flask-Session/Quart-Session setting")
    assert equivalent in message
    assert "did you mean" not in message


def test_every_foreign_setting_in_the_table_gets_one_warning_and_no_guess(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages = warnings_for(tmp_path, caplog, **dict.fromkeys(FOREIGN_KEYS, "x"))
    assert len(messages) == len(FOREIGN_KEYS) >= len(FOREIGN)
    for setting in FOREIGN_KEYS:
        assert [m for m in messages if m.startswith(f"{setting} ")], setting
    assert not any("did you mean" in m for m in messages)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("PERMANENT_SESSION_LIFETIM", "PERMANENT_SESSION_LIFETIME"),
        ("SECRET_KEY_FALLBACK", "SECRET_KEY_FALLBACKS"),
        ("SESSION_COOKIE_SAMESIT", "SESSION_COOKIE_SAMESITE"),
        ("SESSION_REFRESH_EACH_REQUESTS", "SESSION_REFRESH_EACH_REQUEST"),
    ],
)
def test_typos_of_quarts_own_session_settings_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, typo: str, meant: str
) -> None:
    messages = warnings_for(tmp_path, caplog, **{typo: 1})
    assert messages == [f"{typo} is not a setting quartsess or Quart knows; did you mean {meant}?"]


def test_other_settings_of_the_app_are_not_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = {"SQLALCHEMY_DATABASE_URI": "x", "MAX_CONTENT_LENGTH": 1, "MY_API_SECRET": "x"}
    assert warnings_for(tmp_path, caplog, **other) == []


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("SESION_TABLE", "SESSION_TABLE"),
        ("SESSOIN_DB_URL", "SESSION_DB_URL"),
        ("SECERT_KEY", "SECRET_KEY"),
        ("PERMANENT_SESION_LIFETIME", "PERMANENT_SESSION_LIFETIME"),
        ("SESION_COOKIE_SECURE", "SESSION_COOKIE_SECURE"),
        ("SESSION_ENCRYPTION_KEY", "SESSION_ENCRYPTION_KEYS"),
        ("SESSION_DB_URI", "SESSION_DB_URL"),
    ],
)
def test_typos_are_reported_whether_or_not_they_contain_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, typo: str, meant: str
) -> None:
    messages = warnings_for(tmp_path, caplog, **{typo: 1})
    assert messages == [f"{typo} is not a setting quartsess or Quart knows; did you mean {meant}?"]


#: Settings apps commonly hold beside quartsess's: Quart's and Flask's own, and those of
#: well-known extensions, some of them close to ours (JWT_SECRET_KEY, REMEMBER_COOKIE_*).
COMMON_SETTINGS = [
    *Quart.default_config,
    *flask.Flask.default_config,
    *("SQLALCHEMY_DATABASE_URI", "SQLALCHEMY_ENGINE_OPTIONS", "SQLALCHEMY_ECHO"),
    *("SQLALCHEMY_BINDS", "SQLALCHEMY_TRACK_MODIFICATIONS", "SQLALCHEMY_RECORD_QUERIES"),
    *("REMEMBER_COOKIE_NAME", "REMEMBER_COOKIE_DURATION", "REMEMBER_COOKIE_DOMAIN"),
    *("REMEMBER_COOKIE_PATH", "REMEMBER_COOKIE_SECURE", "REMEMBER_COOKIE_HTTPONLY"),
    *("REMEMBER_COOKIE_SAMESITE", "REMEMBER_COOKIE_REFRESH_EACH_REQUEST"),
    *("USE_SESSION_FOR_NEXT", "WTF_CSRF_ENABLED", "WTF_CSRF_SECRET_KEY"),
    *("WTF_CSRF_TIME_LIMIT", "WTF_CSRF_SSL_STRICT", "WTF_CSRF_FIELD_NAME"),
    *("QUART_AUTH_COOKIE_NAME", "QUART_AUTH_COOKIE_SECURE", "QUART_AUTH_COOKIE_SAMESITE"),
    *("QUART_AUTH_COOKIE_DOMAIN", "QUART_AUTH_COOKIE_PATH", "QUART_AUTH_DURATION"),
    *("QUART_AUTH_SALT", "QUART_SCHEMA_CONVERT_CASING", "QUART_DB_DATABASE_URL"),
    *("JWT_SECRET_KEY", "JWT_COOKIE_SECURE", "JWT_SESSION_COOKIE", "JWT_TOKEN_LOCATION"),
    *("MAIL_SERVER", "MAIL_PORT", "MAIL_USE_TLS", "MAIL_USERNAME", "MAIL_PASSWORD"),
    *("CACHE_TYPE", "CACHE_DEFAULT_TIMEOUT", "CACHE_REDIS_URL", "CACHE_KEY_PREFIX"),
    *("BABEL_DEFAULT_LOCALE", "RATELIMIT_STORAGE_URI", "SECURITY_PASSWORD_SALT"),
    *("CELERY_BROKER_URL", "DATABASE_URL", "REDIS_URL", "SENTRY_DSN", "UPLOAD_FOLDER"),
    *("MY_SECRET_KEY", "APP_SECRET_KEY", "SECRET_KEY_FILE", "API_KEY", "ADMIN_EMAIL"),
    # The sample app's own settings.
    *("CSRF_COOKIE_NAME", "LOGIN_LIMIT_PER_ACCOUNT", "LOGIN_LIMIT_PER_CLIENT"),
    "LOGIN_THROTTLE_DB",
]


def test_common_quart_flask_and_extension_settings_are_no_false_alarms(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    others = {key: None for key in COMMON_SETTINGS if key not in Quart.default_config}
    assert warnings_for(tmp_path, caplog, **others) == []
    assert misspelled_keys(COMMON_SETTINGS) == []


def test_only_upper_case_keys_are_compared(tmp_path: Path) -> None:
    assert misspelled_keys(["sesion_table", "Sesion_Table", "SESION_TABLE"]) == [
        ("SESION_TABLE", "SESSION_TABLE")
    ]


async def test_insecure_cookie_settings_are_warned_about_outside_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(tmp_path, SESSION_COOKIE_HTTPONLY=False)
    Session(app)
    with caplog.at_level(logging.WARNING, logger="quartsess"):
        async with app.test_app():
            pass
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "SESSION_COOKIE_SECURE" in messages and "SESSION_COOKIE_HTTPONLY" in messages


async def test_no_cookie_warnings_when_testing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(tmp_path, TESTING=True)
    Session(app)
    with caplog.at_level(logging.WARNING, logger="quartsess"):
        async with app.test_app():
            pass
    assert caplog.records == []


def test_init_app_pattern_and_extension_registry(tmp_path: Path) -> None:
    extension = Session()
    app = build(tmp_path)
    extension.init_app(app)
    assert app.extensions["quartsess"] is extension
    assert extension.interface_for(app) is app.session_interface


def test_a_one_second_idle_timeout_needs_no_other_setting(tmp_path: Path) -> None:
    app = build(tmp_path, SESSION_IDLE_TIMEOUT=1)
    config = SessionConfig.from_mapping(app.config, instance_path=app.instance_path)
    assert (config.idle_timeout, config.touch_interval) == (1, 0)


def test_a_plain_mapping_gets_the_default_lifetime(tmp_path: Path) -> None:
    config = SessionConfig.from_mapping({"SECRET_KEY": "k" * 32}, instance_path=str(tmp_path))
    assert config.idle_timeout == 31 * 24 * 3600
