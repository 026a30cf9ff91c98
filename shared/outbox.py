"""The outbox: request rows still pending after a delay are handed to the workers again."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.ledger import PENDING_STATUSES
from shared.models import AdjustmentRequest


def stale_accounts(session: Session, older_than: float) -> list[str]:
    """Accounts with a request still pending `older_than` seconds after acceptance."""
    cutoff = func.now() - timedelta(seconds=older_than)
    return list(
        session.scalars(
            select(AdjustmentRequest.account_id)
            .where(
                AdjustmentRequest.status.in_(PENDING_STATUSES),
                AdjustmentRequest.created_at < cutoff,
            )
            .distinct()
        )
    )
