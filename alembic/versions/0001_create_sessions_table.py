"""Create the sessions table and its expiry index.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Mirrors ``quartsess.schema.build_table`` as of quartsess 0.1; tests/test_alembic.py
checks with Alembic's autogenerate comparison that the two never drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def table_name() -> str:
    """The sessions table this run manages (env.py reads it from -x table=/environment)."""
    name: str = context.config.attributes.get("quartsess_table", "quart_sessions")
    return name


def upgrade() -> None:
    name = table_name()
    op.create_table(
        name,
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column(
            "payload",
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("touched_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
    )
    op.create_index(f"ix_{name}_expires_at", name, ["expires_at"])


def downgrade() -> None:
    name = table_name()
    op.drop_index(f"ix_{name}_expires_at", table_name=name)
    op.drop_table(name)
