"""each webhook queue's wait found at once

A delivery added to an account's queue waits as long as the queue
(shared/events/webhooks.py, QUEUE_WAITS_UNTIL): the latest `next_attempt_at` of the
queue's pending deliveries. The queue's index ended in `event_id`, so that maximum read
the whole queue for every delivery added, and a queue grows without bound while its
receiver is down. With `next_attempt_at` in its place the maximum is one index entry.
The index is built CONCURRENTLY, outside the migration's transaction, before the old one
goes, so that the fan-out and the senders keep running meanwhile.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 09:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _queue_index(name: str, last: str) -> None:
    op.create_index(
        name,
        "webhook_deliveries",
        ["endpoint_id", sa.text("(COALESCE(account_id, ''))"), last],
        postgresql_where=sa.text("status = 'pending'"),
        postgresql_concurrently=True,
    )


def upgrade() -> None:
    with op.get_context().autocommit_block():
        _queue_index("ix_webhook_deliveries_queue_until", "next_attempt_at")
        op.drop_index(
            "ix_webhook_deliveries_queue", "webhook_deliveries", postgresql_concurrently=True
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _queue_index("ix_webhook_deliveries_queue", "event_id")
        op.drop_index(
            "ix_webhook_deliveries_queue_until",
            "webhook_deliveries",
            postgresql_concurrently=True,
        )
