"""The sessions table, as SQLAlchemy Core metadata (Alembic's migration mirrors it)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, MetaData, String, Table
from sqlalchemy.dialects import mysql

from .config import DEFAULT_TABLE

# MySQL's plain BLOB stops at 64 KiB; sessions may be larger (SESSION_MAX_BYTES).
PayloadType = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def build_table(metadata: MetaData, name: str = DEFAULT_TABLE) -> Table:
    """Define the sessions table called ``name`` on ``metadata``.

    Columns: ``id_hash`` (hex SHA-256 of the cookie ID; the ID itself is never stored),
    ``payload`` (Fernet ciphertext), ``version`` (bumped on every content write, for
    lost-update detection), epoch seconds ``created_at``, ``touched_at`` and
    ``expires_at`` (indexed, for pruning), and for user sessions ``handle`` (a random
    name of the session, stable across new IDs, safe to show), ``user_hash`` (an HMAC of
    the user, never the user itself; indexed) and ``client`` (the User-Agent and IP
    address, encrypted). The last three are NULL in rows written before revision 0002.
    """
    return Table(
        name,
        metadata,
        Column("id_hash", String(64), primary_key=True),
        Column("payload", PayloadType, nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("touched_at", BigInteger, nullable=False),
        Column("expires_at", BigInteger, nullable=False),
        Column("handle", String(32), nullable=True),
        Column("user_hash", String(64), nullable=True),
        Column("client", LargeBinary, nullable=True),
        Index(f"ix_{name}_expires_at", "expires_at"),
        Index(f"ix_{name}_user_hash", "user_hash"),
        Index(f"ux_{name}_handle", "handle", unique=True),
    )


metadata = MetaData()
"""Metadata holding the default ``quart_sessions`` table: add it to your own Alembic
``target_metadata`` to manage quartsess's table alongside yours."""

sessions_table = build_table(metadata)
