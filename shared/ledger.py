"""The one place a balance changes: apply an account's pending requests, in order, in one go."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import (
    Account,
    AccountStatus,
    AdjustmentRequest,
    AdjustmentStatus,
    LedgerEntry,
    ReputationType,
)

PENDING_STATUSES = (AdjustmentStatus.QUEUED, AdjustmentStatus.PROCESSING)


class Rejection:
    """Business rejection codes: final, stored on the request, answered as 409."""

    ACCOUNT_FROZEN = "account_frozen"
    INSUFFICIENT_BALANCE = "insufficient_balance"


REJECTION_MESSAGES = {
    Rejection.ACCOUNT_FROZEN: "the account is frozen",
    Rejection.INSUFFICIENT_BALANCE: "the balance may not go below zero for this points type",
}


@dataclass(frozen=True)
class Outcome:
    """What happened to one request in an apply run."""

    request_id: int
    account_id: str
    status: AdjustmentStatus
    error_code: str | None
    accepted_at: datetime


def _rejection(account: Account, request: AdjustmentRequest, balance: int) -> str | None:
    if account.status == AccountStatus.FROZEN:
        return Rejection.ACCOUNT_FROZEN
    negative_allowed = account.allow_negative or request.allow_negative
    if balance + request.amount < 0 and not negative_allowed:
        return Rejection.INSUFFICIENT_BALANCE
    return None


def _entry(account: Account, request: AdjustmentRequest, balance: int) -> LedgerEntry:
    return LedgerEntry(
        tenant_id=account.tenant_id,
        account_id=account.id,
        request_id=request.id,
        amount=request.amount,
        balance_before=balance,
        balance_after=balance + request.amount,
        negative_allowed=account.allow_negative or request.allow_negative,
        type=request.entry_type,
        reputation_type=ReputationType.MANUAL,
        reputation_context=request.reputation_context,
        comment=request.comment,
        reason=request.reason,
        source=request.source,
        related_id=request.related_id,
        idempotency_key=request.idempotency_key,
        expires_at=request.expires_at,
        created_by=request.created_by,
    )


def apply_pending(session: Session, account_id: str, limit: int) -> list[Outcome]:
    """Apply up to `limit` pending requests of one account in acceptance order.

    The account row is locked first, so a second writer (say, one whose Redis lock
    expired) waits here and then sees the requests already applied. The lock is
    FOR NO KEY UPDATE so that the API can keep inserting requests that reference
    the account (their foreign-key check takes only a KEY SHARE lock).
    The caller owns the transaction.
    """
    account = session.execute(
        select(Account).where(Account.id == account_id).with_for_update(key_share=True)
    ).scalar_one()
    pending = session.scalars(
        select(AdjustmentRequest)
        .where(
            AdjustmentRequest.account_id == account_id,
            AdjustmentRequest.status.in_(PENDING_STATUSES),
        )
        .order_by(AdjustmentRequest.id)
        .limit(limit)
        .with_for_update()
    ).all()
    if not pending:
        return []

    now = func.now()
    balance = account.balance
    applied: list[tuple[AdjustmentRequest, LedgerEntry]] = []
    outcomes: list[Outcome] = []
    for request in pending:
        request.attempts += 1
        request.started_at = request.started_at or now
        request.completed_at = now
        code = _rejection(account, request, balance)
        if code is not None:
            request.status = AdjustmentStatus.REJECTED
            request.error_code = code
            request.error_message = REJECTION_MESSAGES[code]
            outcomes.append(
                Outcome(request.id, account_id, AdjustmentStatus.REJECTED, code, request.created_at)
            )
            continue
        entry = _entry(account, request, balance)
        balance = entry.balance_after
        if request.amount > 0:
            account.total_earned += request.amount
        else:
            account.total_spent -= request.amount
        request.status = AdjustmentStatus.COMPLETED
        applied.append((request, entry))
        outcomes.append(
            Outcome(request.id, account_id, AdjustmentStatus.COMPLETED, None, request.created_at)
        )

    session.add_all(entry for _, entry in applied)
    session.flush()
    for request, entry in applied:
        request.ledger_entry_id = entry.id
    account.balance = balance
    account.version += 1
    account.updated_at = now
    session.flush()
    return outcomes
