"""no planner statistics of event payloads

ANALYZE of `events` sampled every payload and computed statistics of the JSON in it
(most common values, a histogram), which no statement's plan reads: the event log is
filtered by its id, tenant, account, type and time, never by what a payload holds. On
a young events table of 45,000 rows, growing by a tenth between tally's maintenance
passes (or autovacuum's), that ANALYZE took 234-245 ms; without the payload's
statistics, 54-56 ms (PERFORMANCE.md).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 14:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Statistics an earlier ANALYZE made stay (ANALYZE leaves a column it skips as it
    # was); no plan reads them.
    op.execute("ALTER TABLE events ALTER COLUMN payload SET STATISTICS 0")


def downgrade() -> None:
    op.execute("ALTER TABLE events ALTER COLUMN payload SET STATISTICS -1")
