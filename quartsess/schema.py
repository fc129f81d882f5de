"""The sessions table, as SQLAlchemy Core metadata (Alembic's migration mirrors it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, MetaData, String, Table
from sqlalchemy.types import TypeEngine

from .config import DEFAULT_TABLE

MYSQL_DIALECTS = ("mysql", "mariadb")


def payload_type(dialect: str | None = None) -> TypeEngine[bytes]:
    """The payload column's type: LONGBLOB on MariaDB/MySQL, whose plain BLOB stops at
    64 KiB (sessions may be larger: SESSION_MAX_BYTES), a plain binary type elsewhere.
    Without a dialect, a type that is LONGBLOB there and binary elsewhere."""
    if dialect is not None and dialect not in MYSQL_DIALECTS:
        # MySQL's dialect package is imported only where it is needed: every import
        # adds to what each full garbage collection walks.
        return LargeBinary()
    from sqlalchemy.dialects import mysql

    if dialect is not None:
        return mysql.LONGBLOB()
    return LargeBinary().with_variant(mysql.LONGBLOB(), *MYSQL_DIALECTS)


def build_table(
    metadata: MetaData, name: str = DEFAULT_TABLE, *, dialect: str | None = None
) -> Table:
    """Define the sessions table called ``name`` on ``metadata`` (for the database
    ``dialect``, such as ``"postgresql"``, if given; otherwise for any).

    Columns: ``id_hash`` (hex SHA-256 of the cookie ID; the ID itself is never stored),
    ``payload`` (Fernet ciphertext), ``version`` (bumped on every content write, for
    lost-update detection), epoch seconds ``created_at``, ``touched_at`` and
    ``expires_at`` (indexed, for pruning), and for user sessions ``handle`` (a random
    name of the session, stable across new IDs, safe to show), ``user_hash`` (an HMAC of
    the user, never the user itself; indexed) and ``client`` (the User-Agent and IP
    address, encrypted), NULL in rows written before revision 0002; and the lease an
    ``@exclusive`` route holds on the row, ``lease_owner`` and ``lease_until`` (epoch
    seconds), NULL when nobody holds it (revision 0003).
    """
    return Table(
        name,
        metadata,
        Column("id_hash", String(64), primary_key=True),
        Column("payload", payload_type(dialect), nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("touched_at", BigInteger, nullable=False),
        Column("expires_at", BigInteger, nullable=False),
        Column("handle", String(32), nullable=True),
        Column("user_hash", String(64), nullable=True),
        Column("client", LargeBinary, nullable=True),
        Column("lease_owner", String(32), nullable=True),
        Column("lease_until", BigInteger, nullable=True),
        Index(f"ix_{name}_expires_at", "expires_at"),
        Index(f"ix_{name}_user_hash", "user_hash"),
        Index(f"ux_{name}_handle", "handle", unique=True),
    )


if TYPE_CHECKING:
    metadata: MetaData
    """Metadata holding the default ``quart_sessions`` table: add it to your own Alembic
    ``target_metadata`` to manage quartsess's table alongside yours."""
    sessions_table: Table


def __getattr__(name: str) -> Any:
    # Built on first use: the metadata for any database needs MySQL's dialect package.
    if name in ("metadata", "sessions_table"):
        global metadata, sessions_table
        metadata = MetaData()
        sessions_table = build_table(metadata)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
