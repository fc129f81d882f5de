"""Exclusive routes: a lease on a session's row (who holds it, and until when).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Nullable columns that no other statement reads or writes: a table still at 0002 serves
every request, and only an ``@exclusive`` route asks for this revision. Mirrors
``quartsess.schema.build_table``; tests/test_alembic.py checks that the two never drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def table_name() -> str:
    """The sessions table this run manages (env.py reads it from -x table=/environment)."""
    name: str = context.config.attributes.get("quartsess_table", "quart_sessions")
    return name


def upgrade() -> None:
    name = table_name()
    op.add_column(name, sa.Column("lease_owner", sa.String(32), nullable=True))
    op.add_column(name, sa.Column("lease_until", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(table_name()) as batch:  # SQLite cannot drop columns in place
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
