"""The one place a balance changes: apply the pending requests of some accounts, in order.

Single adjustments, bulk batches, reversals, holds, expiries and the relay all come
through `apply_pending`. It works set-based so that one transaction applies
thousands of requests: the accounts are locked in id order; the chunk's requests
are read narrow (id, account, operation, amount, flags), with the lots and holds
they touch when there are any, and Python walks them once to decide each one and
chain the balances; then one statement writes every ledger row (copying the wide
columns from the request rows inside PostgreSQL) and marks those requests
completed, and one statement each marks the rejected, updates the accounts, the
lots and the holds, and adds to the batches' counts.

Points rules (SPEC "Round 2", issue 13):
- spendable = balance - frozen_balance; on a points type that forbids negatives a
  spend, a reversal, a hold beyond it is rejected (`insufficient_balance`); an
  admin's allow_negative_balance lets the balance go below zero, never below the
  points held;
- a positive adjustment with `expires_at` makes a lot; anything that takes points
  (spend, reversal, capture) takes them from the lots that expire first (a reversal
  from the lot of the entry it reverses first), then from points that never expire;
- points coming in are never refused, even into an account an admin took below zero;
- an expiry takes what is left of its lot, but on a type that forbids negatives never
  more than is spendable (held points are not expired); a lot already spent has
  nothing to expire;
- a capture or release accepted after its hold's timeout is refused; the timeout
  releases the hold;
- a frozen account rejects every request except the expiry and timeout requests
  tally makes itself, so that points expire and holds time out on time even there
  (a hold without a timeout stays held until the account is unfrozen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.models import (
    AccountStatus,
    AdjustmentStatus,
    EntryType,
    HoldStatus,
    Operation,
    ReputationType,
    new_ulid,
)

PENDING_STATUSES = (AdjustmentStatus.QUEUED, AdjustmentStatus.PROCESSING)


class Rejection:
    """Business rejection codes: final, stored on the request, answered as 409."""

    ACCOUNT_FROZEN = "account_frozen"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    HOLD_NOT_OPEN = "hold_not_open"
    HOLD_EXPIRED = "hold_expired"
    CAPTURE_EXCEEDS_HOLD = "capture_exceeds_hold"
    NOTHING_TO_EXPIRE = "nothing_to_expire"


REJECTION_MESSAGES = {
    Rejection.ACCOUNT_FROZEN: "the account is frozen",
    Rejection.INSUFFICIENT_BALANCE: "the balance may not go below zero, nor below the points"
    " held, for this points type",
    Rejection.HOLD_NOT_OPEN: "the hold is not open (never placed, captured, released or timed out)",
    Rejection.HOLD_EXPIRED: "the hold had timed out when this request was accepted",
    Rejection.CAPTURE_EXCEEDS_HOLD: "a capture may not exceed its hold",
    Rejection.NOTHING_TO_EXPIRE: "the lot was spent before it expired",
}

# What the expiry and timeout requests tally makes itself are applied even on a
# frozen account.
SYSTEM_OPERATIONS = frozenset({Operation.EXPIRE, Operation.TIMEOUT})
# Besides the requests that take points (a negative amount), those that need the lots.
USES_LOTS = frozenset({Operation.CAPTURE, Operation.EXPIRE})
CLOSES_HOLD = frozenset({Operation.CAPTURE, Operation.RELEASE, Operation.TIMEOUT})
# The operations that move the points their request names.
MOVES = frozenset({Operation.ADJUST, Operation.REVERSAL})


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
class _Lot:
    ulid: str
    remaining: int
    expires_at: datetime
    new: bool = False
    changed: bool = False
    expired_amount: int | None = None


@dataclass
class _Hold:
    request_id: int
    account_id: str
    amount: int
    expires_at: datetime | None
    status: str = HoldStatus.OPEN
    captured: int = 0
    closed_by: int | None = None
    new: bool = False
    changed: bool = False


@dataclass
class _Account:
    id: str
    balance: int
    frozen_balance: int
    allow_negative: bool
    frozen: bool
    earned: int = 0
    spent: int = 0
    expired: int = 0
    changed: bool = False
    # Live lots, the first to expire first; loaded only for chunks that take points.
    lots: list[_Lot] = field(default_factory=list)

    def may_take(self, amount: int, forced: bool) -> bool:
        """Whether `amount` points may leave the account (a spend, a hold, a reversal)."""
        if self.allow_negative:
            return True
        if forced:  # below zero, but never below what is held
            return self.frozen_balance == 0 or self.balance - amount >= self.frozen_balance
        return self.balance - self.frozen_balance >= amount


class _Entry(NamedTuple):
    """A ledger entry decided in Python; the rest comes from its request in SQL (its type
    too: the request's operation, a timeout's being a release)."""

    type: str
    amount: int
    frozen_amount: int = 0


@dataclass
class _Chain:
    """The requests to complete, each with its entry and the balance it starts from, and
    whether its entry is reported back (single adjustments: a client may be waiting)."""

    request_ids: list[int] = field(default_factory=list)
    ulids: list[str] = field(default_factory=list)
    balances_before: list[int] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)
    frozen_amounts: list[int] = field(default_factory=list)
    reported: list[bool] = field(default_factory=list)

    def add(self, request_id: int, ulid: str, before: int, entry: _Entry, reported: bool) -> None:
        self.request_ids.append(request_id)
        self.ulids.append(ulid)
        self.balances_before.append(before)
        self.amounts.append(entry.amount)
        self.frozen_amounts.append(entry.frozen_amount)
        self.reported.append(reported)


# Row locks in id order, so two appliers of overlapping account sets cannot deadlock.
# NO KEY UPDATE lets the API keep inserting requests that reference these accounts.
LOCK_ACCOUNTS = text("""
    SELECT id, balance, frozen_balance, allow_negative, status FROM accounts
    WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE
""")

# Narrow on purpose: the wide columns go from request to ledger row inside PostgreSQL.
# No row locks: the account locks above keep every other applier away.
PENDING = text("""
    SELECT id, account_id, entry_type, amount, allow_negative, related_id, expires_at,
           created_at, batch_id
    FROM adjustment_requests
    WHERE account_id = ANY(:ids) AND status IN ('queued', 'processing')
    ORDER BY id LIMIT :limit
""")

# The lots points are taken from, the first to expire first (the account locks cover them).
LIVE_LOTS = text("""
    SELECT entry_ulid, account_id, remaining, expires_at FROM lots
    WHERE account_id = ANY(:ids) AND remaining > 0
    ORDER BY account_id, expires_at, entry_ulid
""")

HOLDS = text("""
    SELECT request_id, account_id, amount, expires_at, status FROM holds
    WHERE request_id = ANY(:ids)
""")

# One statement writes the ledger rows of the chunk (balances chained and amounts
# decided in Python) and marks their requests completed; it returns the entries of the
# requests to report. Entry ids follow request ids, so each account's chain reads in
# entry-id order. A hold's entry names its hold, whose id is the hold request's. An entry
# that takes no points may end below zero (points coming into an account an admin took
# below zero), as may one a negative-allowing rule applied.
WRITE_ENTRIES = text("""
    WITH chain AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:ulids AS text[]),
                             CAST(:before AS bigint[]), CAST(:amounts AS bigint[]),
                             CAST(:frozen AS bigint[]), CAST(:reported AS boolean[]))
            AS v(request_id, ulid, balance_before, amount, frozen_amount, reported)
    ), entries AS (
        INSERT INTO ledger_entries (ulid, tenant_id, account_id, points_type, request_id,
                                    amount, frozen_amount, balance_before, balance_after,
                                    negative_allowed, type, reputation_type,
                                    reputation_context, comment, reason, source, related_id,
                                    idempotency_key, expires_at, created_by)
        SELECT c.ulid, r.tenant_id, r.account_id, a.points_type, r.id, c.amount,
               c.frozen_amount, c.balance_before, c.balance_before + c.amount,
               a.allow_negative OR r.allow_negative OR c.amount >= 0,
               CASE r.entry_type WHEN 'timeout' THEN 'release' ELSE r.entry_type END,
               CASE r.entry_type WHEN 'reversal' THEN :reversal ELSE :manual END,
               r.reputation_context, r.comment, r.reason, r.source,
               CASE WHEN r.entry_type = 'hold' THEN r.id::text ELSE r.related_id END,
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
    SET balance = v.balance, frozen_balance = v.frozen,
        total_earned = a.total_earned + v.earned, total_spent = a.total_spent + v.spent,
        expired_points = a.expired_points + v.expired, version = a.version + 1,
        updated_at = now()
    FROM unnest(CAST(:ids AS text[]), CAST(:balances AS bigint[]), CAST(:frozen AS bigint[]),
                CAST(:earned AS bigint[]), CAST(:spent AS bigint[]),
                CAST(:expired AS bigint[])) AS v(id, balance, frozen, earned, spent, expired)
    WHERE a.id = v.id
""")

# A new lot copies its account, tenant, amount and expiry from its entry.
INSERT_LOTS = text("""
    INSERT INTO lots (entry_ulid, tenant_id, account_id, amount, remaining, expires_at,
                      expired_amount, expired_at)
    SELECT e.ulid, e.tenant_id, e.account_id, e.amount, v.remaining, e.expires_at, NULL, NULL
    FROM unnest(CAST(:ulids AS text[]), CAST(:remaining AS bigint[])) AS v(ulid, remaining)
    JOIN ledger_entries e ON e.ulid = v.ulid
""")

UPDATE_LOTS = text("""
    UPDATE lots l
    SET remaining = v.remaining, expired_amount = v.expired_amount,
        expired_at = CASE WHEN v.expired_amount IS NULL THEN NULL ELSE now() END
    FROM unnest(CAST(:ulids AS text[]), CAST(:remaining AS bigint[]),
                CAST(:expired AS bigint[])) AS v(ulid, remaining, expired_amount)
    WHERE l.entry_ulid = v.ulid
""")

# A new hold copies its account, tenant, amount and timeout from its request.
INSERT_HOLDS = text("""
    INSERT INTO holds (request_id, tenant_id, account_id, amount, captured, status, expires_at,
                       closed_by, closed_at)
    SELECT r.id, r.tenant_id, r.account_id, r.amount, v.captured, v.status, r.expires_at,
           v.closed_by, CASE WHEN v.closed_by IS NULL THEN NULL ELSE now() END
    FROM unnest(CAST(:ids AS bigint[]), CAST(:captured AS bigint[]), CAST(:statuses AS text[]),
                CAST(:closed_by AS bigint[])) AS v(id, captured, status, closed_by)
    JOIN adjustment_requests r ON r.id = v.id
""")

CLOSE_HOLDS = text("""
    UPDATE holds h
    SET captured = v.captured, status = v.status, closed_by = v.closed_by, closed_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:captured AS bigint[]), CAST(:statuses AS text[]),
                CAST(:closed_by AS bigint[])) AS v(id, captured, status, closed_by)
    WHERE h.request_id = v.id
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


class _Walk:
    """One chunk decided in Python: each request's entry or rejection, in order."""

    def __init__(self, accounts: dict[str, _Account], holds: dict[int, _Hold]) -> None:
        self.accounts = accounts
        self.holds = holds
        self.chain = _Chain()
        self.decided: list[tuple[Any, str | None]] = []

    def request(self, request: Any) -> None:
        account = self.accounts[request.account_id]
        operation = request.entry_type
        if account.frozen and operation not in SYSTEM_OPERATIONS:
            self.decided.append((request, Rejection.ACCOUNT_FROZEN))
            return
        # Adjustments first: a bulk award is one of a hundred thousand.
        if operation in MOVES:
            decided = self._move(account, request)
        else:
            decided = self._decide(account, request)
        if isinstance(decided, str):
            self.decided.append((request, decided))
            return
        self.decided.append((request, None))
        ulid = new_ulid()
        self.chain.add(request.id, ulid, account.balance, decided, request.batch_id is None)
        account.changed = True
        account.balance += decided.amount
        account.frozen_balance += decided.frozen_amount
        if decided.type == EntryType.EXPIRE:
            account.expired -= decided.amount
        elif decided.amount > 0:
            account.earned += decided.amount
        else:
            account.spent -= decided.amount
        earns_lot = decided.type == EntryType.ADJUST and decided.amount > 0
        if earns_lot and request.expires_at is not None:
            _add_lot(account, _Lot(ulid, decided.amount, request.expires_at, new=True))

    def _decide(self, account: _Account, request: Any) -> _Entry | str:
        """The entry of a request that moves no points of its own, or its rejection code."""
        operation = request.entry_type
        if operation == Operation.HOLD:
            if not account.may_take(request.amount, forced=False):
                return Rejection.INSUFFICIENT_BALANCE
            self.holds[request.id] = _Hold(
                request.id, account.id, request.amount, request.expires_at, new=True
            )
            return _Entry(EntryType.HOLD, 0, request.amount)
        if operation in CLOSES_HOLD:
            return self._close_hold(account, request)
        if operation == Operation.EXPIRE:
            return _expire(account, request.related_id)
        raise ValueError(f"unknown operation {operation!r} of request {request.id}")

    def _move(self, account: _Account, request: Any) -> _Entry | str:
        """An adjustment or a reversal: the request's amount, in or out."""
        amount = request.amount
        if amount < 0 and not account.may_take(-amount, forced=request.allow_negative):
            return Rejection.INSUFFICIENT_BALANCE
        reversal = request.entry_type == Operation.REVERSAL
        if amount < 0:
            # A reversal takes from the lot of the entry it reverses first.
            _take_from_lots(account, -amount, first=request.related_id if reversal else "")
        return _Entry(EntryType.REVERSAL if reversal else EntryType.ADJUST, amount)

    def _close_hold(self, account: _Account, request: Any) -> _Entry | str:
        hold = self.holds.get(int(request.related_id))
        if hold is None or hold.account_id != account.id or hold.status != HoldStatus.OPEN:
            return Rejection.HOLD_NOT_OPEN
        timeout = request.entry_type == Operation.TIMEOUT
        if not timeout and hold.expires_at is not None and hold.expires_at <= request.created_at:
            return Rejection.HOLD_EXPIRED
        captured = request.amount or hold.amount
        if request.entry_type == Operation.CAPTURE and captured > hold.amount:
            return Rejection.CAPTURE_EXCEEDS_HOLD
        hold.changed, hold.closed_by = True, request.id
        if request.entry_type == Operation.CAPTURE:
            hold.status, hold.captured = HoldStatus.CAPTURED, captured
            _take_from_lots(account, captured)
            return _Entry(EntryType.CAPTURE, -captured, -hold.amount)
        hold.status = HoldStatus.TIMED_OUT if timeout else HoldStatus.RELEASED
        return _Entry(EntryType.RELEASE, 0, -hold.amount)


def _add_lot(account: _Account, lot: _Lot) -> None:
    account.lots.append(lot)
    account.lots.sort(key=lambda live: (live.expires_at, live.ulid))


def _take_from_lots(account: _Account, amount: int, first: str = "") -> None:
    """Take `amount` points from the lots that expire first (from lot `first` before them)."""
    lots = sorted(account.lots, key=lambda lot: lot.ulid != first) if first else account.lots
    for lot in lots:
        if amount <= 0:
            break
        taken = min(lot.remaining, amount)
        if taken:
            lot.remaining -= taken
            lot.changed = True
            amount -= taken


def _expire(account: _Account, lot_ulid: str) -> _Entry | str:
    """What is left of the lot; on a type that forbids negatives, no more than is spendable."""
    lot = next((lot for lot in account.lots if lot.ulid == lot_ulid), None)
    if lot is None or lot.remaining == 0:
        return Rejection.NOTHING_TO_EXPIRE
    taken = lot.remaining
    if not account.allow_negative:
        taken = min(taken, max(account.balance - account.frozen_balance, 0))
    lot.remaining, lot.expired_amount, lot.changed = 0, taken, True
    if taken == 0:
        return Rejection.NOTHING_TO_EXPIRE
    return _Entry(EntryType.EXPIRE, -taken)


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
            row.frozen_balance,
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

    _load_lots(session, accounts, pending)
    walk = _Walk(accounts, _load_holds(session, pending))
    for request in pending:
        walk.request(request)

    rejected = [(request.id, code) for request, code in walk.decided if code is not None]
    changed = [a for a in accounts.values() if a.changed]
    entries = _write(session, walk.chain, rejected, changed)
    _write_lots(
        session, [lot for a in accounts.values() for lot in a.lots if lot.changed or lot.new]
    )
    _write_holds(session, [hold for hold in walk.holds.values() if hold.changed or hold.new])
    outcomes = [_outcome(request, code, entries.get(request.id)) for request, code in walk.decided]
    _count_batches(session, outcomes)
    return Applied(outcomes, more)


def _load_lots(session: Session, accounts: dict[str, _Account], pending: Sequence[Any]) -> None:
    """The live lots of the accounts whose requests may take points (bulk awards do not)."""
    ids = sorted({r.account_id for r in pending if r.amount < 0 or r.entry_type in USES_LOTS})
    if not ids:
        return
    for row in session.execute(LIVE_LOTS, {"ids": ids}):
        accounts[row.account_id].lots.append(_Lot(row.entry_ulid, row.remaining, row.expires_at))


def _load_holds(session: Session, pending: Sequence[Any]) -> dict[int, _Hold]:
    """The holds the chunk's captures, releases and timeouts close."""
    ids = sorted({int(r.related_id) for r in pending if r.entry_type in CLOSES_HOLD})
    if not ids:
        return {}
    return {
        row.request_id: _Hold(
            row.request_id, row.account_id, row.amount, row.expires_at, row.status
        )
        for row in session.execute(HOLDS, {"ids": ids})
    }


def _write_lots(session: Session, lots: list[_Lot]) -> None:
    new = [lot for lot in lots if lot.new]
    if new:
        session.execute(
            INSERT_LOTS,
            {"ulids": [lot.ulid for lot in new], "remaining": [lot.remaining for lot in new]},
        )
    changed = [lot for lot in lots if not lot.new]
    if changed:
        session.execute(
            UPDATE_LOTS,
            {
                "ulids": [lot.ulid for lot in changed],
                "remaining": [lot.remaining for lot in changed],
                "expired": [lot.expired_amount for lot in changed],
            },
        )


def _write_holds(session: Session, holds: list[_Hold]) -> None:
    for statement, group in (
        (INSERT_HOLDS, [hold for hold in holds if hold.new]),
        (CLOSE_HOLDS, [hold for hold in holds if not hold.new]),
    ):
        if group:
            session.execute(
                statement,
                {
                    "ids": [hold.request_id for hold in group],
                    "captured": [hold.captured for hold in group],
                    "statuses": [str(hold.status) for hold in group],
                    "closed_by": [hold.closed_by for hold in group],
                },
            )


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
                "ulids": chain.ulids,
                "before": chain.balances_before,
                "amounts": chain.amounts,
                "frozen": chain.frozen_amounts,
                "reported": chain.reported,
                "reversal": int(ReputationType.REVERSAL),
                "manual": int(ReputationType.MANUAL),
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
            "frozen": [a.frozen_balance for a in accounts],
            "earned": [a.earned for a in accounts],
            "spent": [a.spent for a in accounts],
            "expired": [a.expired for a in accounts],
        },
    )
    return entries
