"""The one place a balance changes: apply the pending requests of some accounts, in order.

Single adjustments, bulk batches and the relay all come through `apply_pending`.
It works set-based so that one transaction can apply thousands of requests: the
accounts are locked in id order, the new ledger rows go in with one COPY, and
the requests and accounts are updated with one statement each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.models import AccountStatus, AdjustmentStatus, ReputationType, new_ulid

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
    batch_id: str | None = None
    # The ledger entry of a completed request.
    entry_id: int | None = None
    balance_after: int | None = None
    entry_created_at: datetime | None = None


@dataclass(frozen=True)
class Applied:
    """One apply run: what happened to each request, and whether more are pending."""

    outcomes: list[Outcome]
    more: bool


@dataclass
class _Account:
    id: str
    balance: int
    allow_negative: bool
    frozen: bool
    points_type: str
    earned: int = 0
    spent: int = 0
    changed: bool = False


# Row locks in id order, so two appliers of overlapping account sets cannot deadlock.
# NO KEY UPDATE lets the API keep inserting requests that reference these accounts.
LOCK_ACCOUNTS = text("""
    SELECT id, balance, allow_negative, status, points_type FROM accounts
    WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE
""")

PENDING = text("""
    SELECT id, tenant_id, account_id, amount, allow_negative, entry_type, reputation_context,
           comment, reason, source, related_id, idempotency_key, expires_at, created_by,
           created_at, batch_id
    FROM adjustment_requests
    WHERE account_id = ANY(:ids) AND status IN ('queued', 'processing')
    ORDER BY id LIMIT :limit FOR UPDATE
""")

LEDGER_COPY = """
    COPY ledger_entries (ulid, tenant_id, account_id, points_type, request_id, amount,
                         balance_before,
                         balance_after, negative_allowed, type, reputation_type,
                         reputation_context, comment, reason, source, related_id,
                         idempotency_key, expires_at, created_by)
    FROM STDIN
"""

MARK_COMPLETED = text("""
    UPDATE adjustment_requests r
    SET status = 'completed', ledger_entry_id = e.id, attempts = r.attempts + 1,
        started_at = COALESCE(r.started_at, now()), completed_at = now()
    FROM ledger_entries e
    WHERE e.request_id = r.id AND r.id = ANY(:ids) AND e.request_id = ANY(:ids)
    RETURNING r.id AS request_id, e.id AS entry_id, e.balance_after, e.created_at
""")

MARK_REJECTED = text("""
    UPDATE adjustment_requests r
    SET status = 'rejected', error_code = v.code, error_message = v.message,
        attempts = r.attempts + 1, started_at = COALESCE(r.started_at, now()),
        completed_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:codes AS text[]), CAST(:messages AS text[]))
        AS v(id, code, message)
    WHERE r.id = v.id
""")

UPDATE_ACCOUNTS = text("""
    UPDATE accounts a
    SET balance = v.balance, total_earned = a.total_earned + v.earned,
        total_spent = a.total_spent + v.spent, version = a.version + 1, updated_at = now()
    FROM unnest(CAST(:ids AS text[]), CAST(:balances AS bigint[]), CAST(:earned AS bigint[]),
                CAST(:spent AS bigint[])) AS v(id, balance, earned, spent)
    WHERE a.id = v.id
""")


def _rejection(account: _Account, amount: int, allow_negative: bool) -> str | None:
    if account.frozen:
        return Rejection.ACCOUNT_FROZEN
    if account.balance + amount < 0 and not (account.allow_negative or allow_negative):
        return Rejection.INSUFFICIENT_BALANCE
    return None


def _ledger_row(request: Any, account: _Account) -> tuple[Any, ...]:
    before = account.balance
    return (
        new_ulid(), request.tenant_id, account.id, account.points_type, request.id,
        request.amount, before,
        before + request.amount, account.allow_negative or request.allow_negative,
        request.entry_type, int(ReputationType.MANUAL), request.reputation_context,
        request.comment, request.reason, request.source, request.related_id,
        request.idempotency_key, request.expires_at, request.created_by,
    )  # fmt: skip


def apply_pending(session: Session, account_ids: Sequence[str], limit: int) -> Applied:
    """Apply up to `limit` pending requests of these accounts, each account's in order.

    The account rows are locked first, so a second writer (say, one whose Redis
    lock expired) waits here and then sees the requests already applied. The
    caller owns the transaction.
    """
    ids = sorted(set(account_ids))
    accounts = {
        row.id: _Account(
            row.id,
            row.balance,
            row.allow_negative,
            frozen=row.status == AccountStatus.FROZEN,
            points_type=row.points_type,
        )
        for row in session.execute(LOCK_ACCOUNTS, {"ids": ids})
    }
    # One row past the limit tells whether another run is needed.
    pending = session.execute(PENDING, {"ids": ids, "limit": limit + 1}).all()
    more = len(pending) > limit
    pending = pending[:limit]
    if not pending:
        return Applied([], more=False)

    ledger_rows: list[tuple[Any, ...]] = []
    rejected: list[tuple[int, str]] = []
    outcomes: list[Outcome] = []
    for request in pending:
        account = accounts[request.account_id]
        code = _rejection(account, request.amount, request.allow_negative)
        status = AdjustmentStatus.COMPLETED if code is None else AdjustmentStatus.REJECTED
        outcomes.append(
            Outcome(request.id, account.id, status, code, request.created_at, request.batch_id)
        )
        if code is not None:
            rejected.append((request.id, code))
            continue
        ledger_rows.append(_ledger_row(request, account))
        account.balance += request.amount
        account.changed = True
        if request.amount > 0:
            account.earned += request.amount
        else:
            account.spent -= request.amount

    entries = _write(session, ledger_rows, rejected, [a for a in accounts.values() if a.changed])
    return Applied([_with_entry(outcome, entries) for outcome in outcomes], more)


def _with_entry(outcome: Outcome, entries: dict[int, Any]) -> Outcome:
    entry = entries.get(outcome.request_id)
    if entry is None:
        return outcome
    return replace(
        outcome, entry_id=entry.entry_id, balance_after=entry.balance_after,
        entry_created_at=entry.created_at,
    )  # fmt: skip


def _write(
    session: Session,
    ledger_rows: list[tuple[Any, ...]],
    rejected: list[tuple[int, str]],
    accounts: list[_Account],
) -> dict[int, Any]:
    """Write the chunk; return each completed request's ledger entry (id, balance, time)."""
    entries: dict[int, Any] = {}
    if ledger_rows:
        driver = session.connection().connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(LEDGER_COPY) as copy:  # type: ignore[union-attr]
            for row in ledger_rows:
                copy.write_row(row)
        completed = session.execute(MARK_COMPLETED, {"ids": [row[4] for row in ledger_rows]})
        entries = {row.request_id: row for row in completed}
    if rejected:
        session.execute(
            MARK_REJECTED,
            {
                "ids": [request_id for request_id, _ in rejected],
                "codes": [code for _, code in rejected],
                "messages": [REJECTION_MESSAGES[code] for _, code in rejected],
            },
        )
    if not accounts:
        return entries
    session.execute(
        UPDATE_ACCOUNTS,
        {
            "ids": [a.id for a in accounts],
            "balances": [a.balance for a in accounts],
            "earned": [a.earned for a in accounts],
            "spent": [a.spent for a in accounts],
        },
    )
    return entries
