"""User sessions: a stable handle, the keyed hash of the user, the encrypted client.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Nullable columns: rows written under 0001 stay readable and get the columns filled when
they are next written. Mirrors ``quartsess.schema.build_table``; tests/test_alembic.py
checks that the two never drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def table_name() -> str:
    """The sessions table this run manages (env.py reads it from -x table=/environment)."""
    name: str = context.config.attributes.get("quartsess_table", "quart_sessions")
    return name


def upgrade() -> None:
    name = table_name()
    op.add_column(name, sa.Column("handle", sa.String(32), nullable=True))
    op.add_column(name, sa.Column("user_hash", sa.String(64), nullable=True))
    op.add_column(name, sa.Column("client", sa.LargeBinary(), nullable=True))
    op.create_index(f"ix_{name}_user_hash", name, ["user_hash"])
    op.create_index(f"ux_{name}_handle", name, ["handle"], unique=True)


def downgrade() -> None:
    name = table_name()
    op.drop_index(f"ux_{name}_handle", table_name=name)
    op.drop_index(f"ix_{name}_user_hash", table_name=name)
    with op.batch_alter_table(name) as batch:  # SQLite cannot drop columns in place
        batch.drop_column("client")
        batch.drop_column("user_hash")
        batch.drop_column("handle")
