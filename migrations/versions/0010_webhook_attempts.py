"""when a webhook delivery was first tried, and since when an endpoint fails

A delivery is retried until its first attempt is older than the retry window
(TALLY_WEBHOOK_RETRY_HOURS), then kept as failed: `first_attempt_at` records that
attempt (a redelivery clears it, so the window starts again). An endpoint that
has had no 2xx since `failing_since` for TALLY_WEBHOOK_DISABLE_AFTER_HOURS is
disabled; any 2xx clears it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 15:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE webhook_deliveries ADD COLUMN first_attempt_at timestamptz")
    op.execute("ALTER TABLE webhook_endpoints ADD COLUMN failing_since timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE webhook_endpoints DROP COLUMN failing_since")
    op.execute("ALTER TABLE webhook_deliveries DROP COLUMN first_attempt_at")
