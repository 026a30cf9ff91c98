"""Freezing and unfreezing an account: the one writer of an account's status.

A frozen account keeps every request it is sent: the worker rejects them
(`account_frozen`) in their turn, and unfreezing replays none of them. Only tally's
own expiry and hold-timeout requests still apply (see shared.ledger.apply).
"""

from __future__ import annotations

import logging

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.intake.adjustments import create_account
from shared.models import Account, AccountStatus
from shared.platform.config import PointsType

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
    """Set the user's account of this type to `status`, creating it if need be (so that a
    user can be frozen before their first points); idempotent. The caller owns the
    transaction."""
    account = _account(session, user_id, points_type.name)
    if account is None:
        create_account(session.connection(), tenant_id, user_id, points_type)
        account = _account(session, user_id, points_type.name)
    assert account is not None
    change_status(session, account, status, by=by, reason=reason)
    return account


def accounts_of(session: Session, user_id: int, points_type: str | None = None) -> list[Account]:
    """The user's accounts (of one type, if named), by type; none is created."""
    scope = select(Account).where(Account.user_id == user_id)
    if points_type is not None:
        scope = scope.where(Account.points_type == points_type)
    return list(session.scalars(scope.order_by(Account.points_type)))


def change_status(
    session: Session, account: Account, status: AccountStatus, *, by: str, reason: str = ""
) -> None:
    """Set an existing account to `status` (idempotent); a change is logged with who made
    it (`by`) and why."""
    before = account.status
    session.execute(SET_STATUS, {"id": account.id, "status": status.value})
    session.refresh(account)
    if account.status != before:
        log.info(
            "account %s",
            status.value,
            extra={"account_id": account.id, "tenant_id": account.tenant_id, "by": by,
                   "reason": reason},
        )  # fmt: skip


def _account(session: Session, user_id: int, points_type: str) -> Account | None:
    return session.scalars(
        select(Account).where(Account.user_id == user_id, Account.points_type == points_type)
    ).one_or_none()
