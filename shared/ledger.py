"""The one place a balance changes: apply the pending requests of some accounts, in order.

Single adjustments, bulk batches and the relay all come through `apply_pending`.
It works set-based so that one transaction applies thousands of requests: the
accounts are locked in id order; the chunk's requests are read narrow (id,
account, amount, flags), and Python walks them once to decide each one and chain
the balances; then one statement writes every ledger row (copying the wide
columns from the request rows inside PostgreSQL) and marks those requests
completed, and one statement each marks the rejected, updates the accounts and
adds to the batches' counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

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


class Outcome(NamedTuple):
    """What happened to one request in an apply run (a tuple: a chunk makes thousands)."""

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
    earned: int = 0
    spent: int = 0
    changed: bool = False


@dataclass
class _Chain:
    """The requests to complete, each with the balance its entry starts from, and whether
    its entry is reported back (single adjustments: a client may be waiting for it)."""

    request_ids: list[int] = field(default_factory=list)
    balances_before: list[int] = field(default_factory=list)
    reported: list[bool] = field(default_factory=list)

    def add(self, request_id: int, balance_before: int, reported: bool) -> None:
        self.request_ids.append(request_id)
        self.balances_before.append(balance_before)
        self.reported.append(reported)


# Row locks in id order, so two appliers of overlapping account sets cannot deadlock.
# NO KEY UPDATE lets the API keep inserting requests that reference these accounts.
LOCK_ACCOUNTS = text("""
    SELECT id, balance, allow_negative, status FROM accounts
    WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE
""")

# Narrow on purpose: the wide columns go from request to ledger row inside PostgreSQL.
# No row locks: the account locks above keep every other applier away.
PENDING = text("""
    SELECT id, account_id, amount, allow_negative, created_at, batch_id
    FROM adjustment_requests
    WHERE account_id = ANY(:ids) AND status IN ('queued', 'processing')
    ORDER BY id LIMIT :limit
""")

# One statement writes the ledger rows of the chunk (balances chained in Python) and
# marks their requests completed; it returns the entries of the requests to report.
# Entry ids follow request ids, so each account's chain reads in entry-id order.
WRITE_ENTRIES = text("""
    WITH chain AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:ulids AS text[]),
                             CAST(:before AS bigint[]), CAST(:reported AS boolean[]))
            AS v(request_id, ulid, balance_before, reported)
    ), entries AS (
        INSERT INTO ledger_entries (ulid, tenant_id, account_id, points_type, request_id,
                                    amount, balance_before, balance_after, negative_allowed,
                                    type, reputation_type, reputation_context, comment, reason,
                                    source, related_id, idempotency_key, expires_at, created_by)
        SELECT c.ulid, r.tenant_id, r.account_id, a.points_type, r.id, r.amount,
               c.balance_before, c.balance_before + r.amount,
               a.allow_negative OR r.allow_negative, r.entry_type, :reputation_type,
               r.reputation_context, r.comment, r.reason, r.source, r.related_id,
               r.idempotency_key, r.expires_at, r.created_by
        FROM chain c
        JOIN adjustment_requests r ON r.id = c.request_id
        JOIN accounts a ON a.id = r.account_id
        ORDER BY c.request_id
        RETURNING id, request_id, balance_after, created_at
    ), completed AS (
        UPDATE adjustment_requests r
        SET status = 'completed', ledger_entry_id = e.id, attempts = r.attempts + 1,
            started_at = COALESCE(r.started_at, now()), completed_at = now()
        FROM entries e
        WHERE r.id = e.request_id
    )
    SELECT e.request_id, e.id AS entry_id, e.balance_after, e.created_at
    FROM entries e JOIN chain c ON c.request_id = e.request_id
    WHERE c.reported
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


# Batches last, just before the commit, and locked in id order: two appliers that count
# items of the same batches wait for each other only for that commit, and never deadlock.
LOCK_BATCHES = text("SELECT id FROM batches WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE")

COUNT_BATCHES = text("""
    UPDATE batches b
    SET completed = b.completed + v.completed, rejected = b.rejected + v.rejected,
        completed_at = CASE WHEN b.completed + v.completed + b.rejected + v.rejected = b.total
                            THEN now() END
    FROM unnest(CAST(:ids AS text[]), CAST(:completed AS integer[]),
                CAST(:rejected AS integer[])) AS v(id, completed, rejected)
    WHERE b.id = v.id
""")


def _rejection(account: _Account, amount: int, allow_negative: bool) -> str | None:
    if account.frozen:
        return Rejection.ACCOUNT_FROZEN
    if account.balance + amount < 0 and not (account.allow_negative or allow_negative):
        return Rejection.INSUFFICIENT_BALANCE
    return None


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
        )
        for row in session.execute(LOCK_ACCOUNTS, {"ids": ids})
    }
    # One row past the limit tells whether another run is needed.
    pending = session.execute(PENDING, {"ids": ids, "limit": limit + 1}).all()
    more = len(pending) > limit
    pending = pending[:limit]
    if not pending:
        return Applied([], more=False)

    chain = _Chain()
    decided: list[tuple[Any, str | None]] = []
    for request in pending:
        account = accounts[request.account_id]
        code = _rejection(account, request.amount, request.allow_negative)
        decided.append((request, code))
        if code is not None:
            continue
        chain.add(request.id, account.balance, request.batch_id is None)
        account.balance += request.amount
        account.changed = True
        if request.amount > 0:
            account.earned += request.amount
        else:
            account.spent -= request.amount

    rejected = [(request.id, code) for request, code in decided if code is not None]
    entries = _write(session, chain, rejected, [a for a in accounts.values() if a.changed])
    outcomes = [_outcome(request, code, entries.get(request.id)) for request, code in decided]
    _count_batches(session, outcomes)
    return Applied(outcomes, more)


def _count_batches(session: Session, outcomes: list[Outcome]) -> None:
    """Add the chunk's final items to their batches' counts."""
    counts: dict[str, list[int]] = {}
    for outcome in outcomes:
        if outcome.batch_id is not None:
            done = counts.setdefault(outcome.batch_id, [0, 0])
            done[outcome.status == AdjustmentStatus.REJECTED] += 1
    if not counts:
        return
    ids = sorted(counts)
    session.execute(LOCK_BATCHES, {"ids": ids})
    session.execute(
        COUNT_BATCHES,
        {
            "ids": ids,
            "completed": [counts[batch][0] for batch in ids],
            "rejected": [counts[batch][1] for batch in ids],
        },
    )


def _outcome(request: Any, code: str | None, entry: Any) -> Outcome:
    if code is not None:
        return Outcome(
            request.id, request.account_id, AdjustmentStatus.REJECTED, code,
            request.created_at, request.batch_id,
        )  # fmt: skip
    if entry is None:  # a batch item: its entry is not reported
        return Outcome(
            request.id, request.account_id, AdjustmentStatus.COMPLETED, None,
            request.created_at, request.batch_id,
        )  # fmt: skip
    return Outcome(
        request.id, request.account_id, AdjustmentStatus.COMPLETED, None, request.created_at,
        request.batch_id, entry.entry_id, entry.balance_after, entry.created_at,
    )  # fmt: skip


def _write(
    session: Session, chain: _Chain, rejected: list[tuple[int, str]], accounts: list[_Account]
) -> dict[int, Any]:
    """Write the chunk; return the ledger entry (id, balance, time) of each reported request."""
    entries: dict[int, Any] = {}
    if chain.request_ids:
        written = session.execute(
            WRITE_ENTRIES,
            {
                "ids": chain.request_ids,
                "ulids": [new_ulid() for _ in chain.request_ids],
                "before": chain.balances_before,
                "reported": chain.reported,
                "reputation_type": int(ReputationType.MANUAL),
            },
        )
        entries = {row.request_id: row for row in written}
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
