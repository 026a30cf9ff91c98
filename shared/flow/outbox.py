"""The outbox: the pending request rows, as the interactive lane's drain task finds them,
and as the relay finds them when they are still pending after a delay."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from shared.flow.dispatch import Lane
from shared.ledger.apply import PENDING_STATUSES
from shared.models import AdjustmentRequest
from shared.platform.db import autocommit


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


# The oldest pending requests that belong to no batch: what the interactive lane's drain
# task applies (shared/flow/dispatch.py). Migration 0015's partial index holds exactly
# these rows, with their accounts, so the statement reads `rows` index entries at most.
SINGLE_PENDING = text("""
    SELECT DISTINCT account_id FROM (
        SELECT account_id FROM adjustment_requests
        WHERE status IN ('queued', 'processing') AND batch_id IS NULL
          AND account_id <> ALL(CAST(:parked AS text[]))
        ORDER BY id LIMIT :rows
    ) AS oldest
""")


def pending_single_accounts(engine: Engine, rows: int, parked: Sequence[str] = ()) -> list[str]:
    """The accounts of the `rows` oldest pending single adjustments (and of the expiries
    and timeouts tally asks for itself) but those `parked`, sorted."""
    with autocommit(engine) as connection:
        return sorted(connection.scalars(SINGLE_PENDING, {"rows": rows, "parked": list(parked)}))
