"""read indexes

Indexes for the score list and the leaderboard on large ledgers. They are built
CONCURRENTLY, outside the migration's transaction, so that an existing ledger
keeps accepting entries while they are built.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_ledger_entries_account_created",
            "ledger_entries",
            ["account_id", sa.text("created_at DESC"), sa.text("id DESC")],
            unique=False,
            postgresql_concurrently=True,
        )
        op.create_index(
            "ix_ledger_entries_tenant_created",
            "ledger_entries",
            ["tenant_id", sa.text("created_at DESC"), sa.text("id DESC")],
            unique=False,
            postgresql_include=["account_id", "amount", "reputation_type", "type"],
            postgresql_concurrently=True,
        )
        op.create_index(
            "ix_ledger_entries_tenant_context",
            "ledger_entries",
            ["tenant_id", "points_type", "reputation_context"],
            unique=False,
            postgresql_ops={"reputation_context": "text_pattern_ops"},
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in (
            "ix_ledger_entries_tenant_context",
            "ix_ledger_entries_tenant_created",
            "ix_ledger_entries_account_created",
        ):
            op.drop_index(name, table_name="ledger_entries", postgresql_concurrently=True)
