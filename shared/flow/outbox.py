"""The outbox: request rows still pending after a delay are handed to the workers again."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.flow.dispatch import Lane
from shared.ledger.apply import PENDING_STATUSES
from shared.models import AdjustmentRequest


def stale_accounts(session: Session, older_than: float) -> dict[Lane, list[str]]:
    """Accounts with a request still pending `older_than` seconds after acceptance, by lane.

    An account with a stale single adjustment goes to the interactive lane (its drain
    applies the account's batch items too); one with only batch items to the bulk lane.
    """
    cutoff = func.now() - timedelta(seconds=older_than)
    rows = session.execute(
        select(
            AdjustmentRequest.account_id,
            func.bool_and(AdjustmentRequest.batch_id.is_not(None)).label("bulk_only"),
        )
        .where(
            AdjustmentRequest.status.in_(PENDING_STATUSES),
            AdjustmentRequest.created_at < cutoff,
        )
        .group_by(AdjustmentRequest.account_id)
    )
    stale: dict[Lane, list[str]] = {}
    for account_id, bulk_only in rows:
        stale.setdefault(Lane.BULK if bulk_only else Lane.INTERACTIVE, []).append(account_id)
    return stale
