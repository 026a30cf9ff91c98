"""batch counts

A batch keeps how many of its items are completed and rejected, and when the last
became final: the applier adds to them in the transaction that applies the items,
so a batch's status is one row, however large the batch and however often its
client asks. Existing batches are counted from their requests.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "batches", sa.Column("completed", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "batches", sa.Column("rejected", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("batches", sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("""
        UPDATE batches b
        SET completed = c.completed, rejected = c.rejected,
            completed_at = CASE WHEN c.completed + c.rejected = b.total THEN c.last END
        FROM (
            SELECT batch_id,
                   COUNT(*) FILTER (WHERE status = 'completed') AS completed,
                   COUNT(*) FILTER (WHERE status = 'rejected') AS rejected,
                   MAX(completed_at) AS last
            FROM adjustment_requests WHERE batch_id IS NOT NULL GROUP BY batch_id
        ) c
        WHERE c.batch_id = b.id
    """)
    op.create_check_constraint(
        "final_within_total",
        "batches",
        "completed >= 0 AND rejected >= 0 AND completed + rejected <= total",
    )


def downgrade() -> None:
    op.drop_constraint("final_within_total", "batches", type_="check")
    op.drop_column("batches", "completed_at")
    op.drop_column("batches", "rejected")
    op.drop_column("batches", "completed")
