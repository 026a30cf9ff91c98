"""Freezing and unfreezing an account: the one writer of an account's status.

A frozen account keeps every request it is sent: the worker rejects them
(`account_frozen`) in their turn, and unfreezing replays none of them. Only tally's
own expiry and hold-timeout requests still apply (see shared.ledger).
"""

from __future__ import annotations

import logging

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.adjustments import create_account
from shared.config import PointsType
from shared.models import Account, AccountStatus

log = logging.getLogger(__name__)

# Waits for an applier holding the account's row lock, so the change falls between two
# chunks: the requests applied before it were applied while active.
SET_STATUS = text("""
    UPDATE accounts SET status = :status, version = version + 1, updated_at = now()
    WHERE id = :id AND status <> :status
""")


def set_status(
    session: Session,
    tenant_id: str,
    user_id: int,
    points_type: PointsType,
    status: AccountStatus,
    *,
    by: str,
    reason: str = "",
) -> Account:
    """Set the user's account of this type to `status` (creating it if need be); idempotent.

    A change is logged with who made it (`by`) and why. The caller owns the transaction.
    """
    account_of = select(Account).where(
        Account.user_id == user_id, Account.points_type == points_type.name
    )
    account = session.scalars(account_of).one_or_none()
    if account is None:
        create_account(session.connection(), tenant_id, user_id, points_type)
        account = session.scalars(account_of).one()
    before = account.status
    session.execute(SET_STATUS, {"id": account.id, "status": status.value})
    session.refresh(account)
    if account.status != before:
        log.info(
            "account %s",
            status.value,
            extra={"account_id": account.id, "tenant_id": tenant_id, "by": by, "reason": reason},
        )
    return account
