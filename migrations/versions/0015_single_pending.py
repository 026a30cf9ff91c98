"""single adjustments pending, oldest first

The interactive lane's drain task now finds its work in PostgreSQL: the accounts of the
oldest pending requests that belong to no batch (shared/flow/outbox.py,
`pending_single_accounts`). This partial index holds exactly those rows, with their
account, so the scan reads a few hundred index entries however many batch items are
pending beside them. It is built CONCURRENTLY, outside the migration's transaction, so
that a running deployment keeps accepting requests meanwhile.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_adjustment_requests_single_pending",
            "adjustment_requests",
            ["id"],
            postgresql_include=["account_id"],
            postgresql_where=sa.text("status IN ('queued', 'processing') AND batch_id IS NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_adjustment_requests_single_pending",
            table_name="adjustment_requests",
            postgresql_concurrently=True,
        )
