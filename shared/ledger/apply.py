"""The one place a balance changes: apply the pending requests of some accounts, in order.

Single adjustments, bulk batches, reversals, holds, expiries and the relay all come
through `apply_pending`. It works set-based so that one transaction applies
thousands of requests: the accounts are locked in id order; the chunk's requests
are read narrow (id, account, operation, amount, flags), with the lots, holds and
reversed entries they touch when there are any (and what the capped accounts have
counted towards their caps), and Python walks them once, with the points rules of
`shared.ledger.points` (docs/points.md) and the caps (docs/periods.md), to decide each
one and chain the balances; then one statement writes every ledger row (copying the
wide columns from the request rows inside PostgreSQL), marks those requests completed
and adds the entries to their accounts' period totals, and one statement each marks
the rejected, updates the accounts, writes the lots, their moves and the holds, and
adds to the batches' counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.ledger.points import (
    FREE,
    REJECTION_MESSAGES,
    Account,
    Entry,
    Hold,
    Lot,
    Moves,
    Parts,
    Rejection,
    expire,
    give_back,
    split,
    take,
)
from shared.models import (
    AccountStatus,
    AdjustmentStatus,
    EntryType,
    HoldStatus,
    Operation,
    Period,
    ReputationType,
    new_ulid,
)
from shared.platform.config import Cap
from shared.platform.db import UNPREPARED

__all__ = ["REJECTION_MESSAGES", "Applied", "Outcome", "Rejection", "apply_pending"]

PERIODS = [str(period) for period in Period]
PENDING_STATUSES = (AdjustmentStatus.QUEUED, AdjustmentStatus.PROCESSING)

# What the expiry and timeout requests tally makes itself are applied even on a
# frozen account.
SYSTEM_OPERATIONS = frozenset({Operation.EXPIRE, Operation.TIMEOUT})
CLOSES_HOLD = frozenset({Operation.CAPTURE, Operation.RELEASE, Operation.TIMEOUT})


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
class _Chain:
    """The requests to complete, each with its entry and the balance it starts from, and
    whether its entry is reported back (single adjustments: a client may be waiting);
    and the lot moves of those entries."""

    request_ids: list[int] = field(default_factory=list)
    ulids: list[str] = field(default_factory=list)
    balances_before: list[int] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)
    frozen_amounts: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    cut: list[int] = field(default_factory=list)
    capped: list[int] = field(default_factory=list)
    reported: list[bool] = field(default_factory=list)
    moves: list[tuple[str, str, int, int]] = field(default_factory=list)

    def add(
        self, request_id: int, ulid: str, before: int, entry: Entry, reported: bool, moves: Moves
    ) -> None:
        self.request_ids.append(request_id)
        self.ulids.append(ulid)
        self.balances_before.append(before)
        self.amounts.append(entry.amount)
        self.frozen_amounts.append(entry.frozen_amount)
        self.expired.append(entry.expired)
        self.cut.append(entry.cut)
        self.capped.append(entry.capped)
        self.reported.append(reported)
        self.moves += [(ulid, lot, delta, expired) for lot, delta, expired in moves.items()]


class _Reversed(NamedTuple):
    """An entry a reversal in the chunk undoes."""

    ulid: str
    type: str
    amount: int
    expired: int
    related_id: str


# Row locks in id order, so two appliers of overlapping account sets cannot deadlock.
# NO KEY UPDATE lets the API keep inserting requests that reference these accounts.
LOCK_ACCOUNTS = text("""
    SELECT id, balance, frozen_balance, allow_negative, status, points_type FROM accounts
    WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE
""")

# Narrow on purpose: the wide columns go from request to ledger row inside PostgreSQL.
# No row locks: the account locks above keep every other applier away. `now` is the
# chunk's time (its first row's): every entry the chunk writes is made at that moment,
# and counted in the periods (and against the caps) it falls in. Read once the accounts
# are locked, it is later than every entry of theirs already committed, so an account's
# entries are in time order as well as in id order, which balances as of a moment rely on.
#
# Never prepared: a generic plan made while the table was nearly empty (the first
# singles on a new database) scanned the whole table for every chunk once a bulk batch
# had filled it: 129 chunks of 30-46 ms; PostgreSQL spent 14.7-16.0 s of CPU on a batch
# of 100,000 awards, and 10.9-12.1 s planning this read with each chunk's values
# (PERFORMANCE.md, "A fresh database").
PENDING = text("""
    SELECT id, account_id, entry_type, amount, allow_negative, related_id, expires_at,
           created_at, batch_id, reputation_context, source, clock_timestamp() AS now
    FROM adjustment_requests
    WHERE account_id = ANY(:ids) AND status IN ('queued', 'processing')
    ORDER BY id LIMIT :limit
""").execution_options(**UNPREPARED)
# What the capped accounts have counted towards their cap in the period the chunk is in.
CAP_USED = text("""
    SELECT v.account_id, COALESCE(t.capped, 0) AS used
    FROM unnest(CAST(:ids AS text[]), CAST(:periods AS text[])) AS v(account_id, period)
    JOIN accounts a ON a.id = v.account_id
    JOIN tenants tn ON tn.id = a.tenant_id
    LEFT JOIN period_totals t
        ON t.account_id = v.account_id AND t.period = v.period
       AND t.starts = date_trunc(v.period, CAST(:at AS timestamptz) AT TIME ZONE tn.time_zone)::date
""")

# The accounts' lots with points left or owed, and the lots the chunk's requests name
# (an expiry's, a reversed earn's, those an entry being given back took from).
LOTS = text("""
    SELECT entry_ulid, account_id, amount, remaining, expires_at, expired_amount FROM lots
    WHERE (account_id = ANY(:ids) AND remaining <> 0) OR entry_ulid = ANY(:ulids)
""")

# The entries the chunk's reversals undo.
REVERSED = text("""
    SELECT ulid, account_id, type, amount, expired, related_id FROM ledger_entries
    WHERE ulid = ANY(:ulids)
""")

# The holds the chunk closes, or whose captures it reverses, with their hold entry.
HOLDS = text("""
    SELECT h.request_id, h.account_id, h.amount, h.expires_at, h.status, e.ulid AS entry_ulid
    FROM holds h JOIN ledger_entries e ON e.request_id = h.request_id
    WHERE h.request_id = ANY(:ids)
""")

MOVES_OF = text("""
    SELECT entry_ulid, lot_ulid, delta, expired FROM lot_moves WHERE entry_ulid = ANY(:ulids)
""")

# One statement writes the ledger rows of the chunk (balances chained and amounts
# decided in Python), marks their requests completed and adds the entries to their
# accounts' period totals; it returns the entries of the requests to report. Entry ids
# follow request ids, so each account's chain reads in entry-id order. A hold's entry
# names its hold, whose id is the hold request's. An entry that takes no points may
# end below zero (points coming into an account an admin took below zero), as may one a
# negative-allowing rule applied. Each period total changed moves its account from its
# old scores to its new ones in `period_scores` (what board sizes and ranks are summed
# from, migration 0012). It writes the events of its entries and of the requests it
# applied (docs/events.md; this is the only writer of ledger entries and of completed
# requests, migration 0017), as MARK_REJECTED writes its rejections'.
WRITE_ENTRIES = text("""
    WITH chain AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:ulids AS text[]),
                             CAST(:before AS bigint[]), CAST(:amounts AS bigint[]),
                             CAST(:frozen AS bigint[]), CAST(:expired AS bigint[]),
                             CAST(:cut AS bigint[]), CAST(:capped AS bigint[]),
                             CAST(:reported AS boolean[]))
            AS v(request_id, ulid, balance_before, amount, frozen_amount, expired, cut,
                 capped, reported)
    ), entries AS (
        INSERT INTO ledger_entries (ulid, tenant_id, account_id, points_type, request_id,
                                    amount, frozen_amount, expired, balance_before,
                                    balance_after,
                                    negative_allowed, type, reputation_type,
                                    reputation_context, comment, reason, source, related_id,
                                    idempotency_key, expires_at, created_by, created_at)
        SELECT c.ulid, r.tenant_id, r.account_id, a.points_type, r.id, c.amount,
               c.frozen_amount, c.expired, c.balance_before, c.balance_before + c.amount,
               a.allow_negative OR r.allow_negative OR c.amount >= 0,
               CASE r.entry_type WHEN 'timeout' THEN 'release' ELSE r.entry_type END,
               CASE r.entry_type WHEN 'reversal' THEN :reversal ELSE :manual END,
               r.reputation_context, r.comment, r.reason, r.source,
               CASE WHEN r.entry_type = 'hold' THEN r.id::text ELSE r.related_id END,
               r.idempotency_key, r.expires_at, r.created_by, :at
        FROM chain c
        JOIN adjustment_requests r ON r.id = c.request_id
        JOIN accounts a ON a.id = r.account_id
        ORDER BY c.request_id
        RETURNING id, ulid, request_id, tenant_id, account_id, points_type, type, amount,
                  frozen_amount, expired, balance_before, balance_after, reputation_context,
                  comment, reason, source, related_id, created_at
    ), completed AS (
        UPDATE adjustment_requests r
        SET status = 'completed', ledger_entry_id = e.id, attempts = r.attempts + 1,
            started_at = COALESCE(r.started_at, now()), completed_at = now(), cut = c.cut
        FROM entries e JOIN chain c ON c.request_id = e.request_id
        WHERE r.id = e.request_id
        -- The user's public id by key, whatever the estimates, once per request.
        RETURNING r.id, r.idempotency_key, r.entry_type, r.amount, r.batch_id, r.cut,
                  (SELECT COALESCE(u.external_id, u.id::text) FROM users u
                   WHERE u.id = r.user_id) AS user_ref
    ), added AS (
        SELECT e.account_id, p.period,
               CASE p.period WHEN 'all' THEN DATE '1970-01-01'
                    ELSE date_trunc(p.period, CAST(:at AS timestamptz)
                                              AT TIME ZONE tn.time_zone)::date END AS starts,
               e.tenant_id, e.points_type, a.user_id, CAST(sum(e.amount) AS bigint) AS total,
               count(*) AS entries,
               CAST(COALESCE(sum(e.amount) FILTER (WHERE e.type = 'reversal'), 0) AS bigint)
                   AS reversal_total,
               count(*) FILTER (WHERE e.type = 'reversal') AS reversal_entries,
               sum(c.capped) AS capped,
               CAST(sum(c.frozen_amount) AS bigint) AS frozen_total,
               CAST(sum(c.expired) AS bigint) AS expired_total,
               CAST(COALESCE(sum(c.amount + c.expired) FILTER (WHERE c.amount + c.expired > 0),
                             0) AS bigint) AS earned_total,
               CAST(COALESCE(-sum(c.amount + c.expired) FILTER (WHERE c.amount + c.expired < 0),
                             0) AS bigint) AS spent_total
        FROM entries e
        JOIN chain c ON c.request_id = e.request_id
        JOIN accounts a ON a.id = e.account_id
        JOIN tenants tn ON tn.id = e.tenant_id
        CROSS JOIN unnest(CAST(:periods AS text[])) AS p(period)
        GROUP BY 1, 2, 3, 4, 5, 6
    ), totals AS (
        INSERT INTO period_totals AS t (account_id, period, starts, tenant_id, points_type,
                                        user_id, total, entries, reversal_total,
                                        reversal_entries, capped, frozen_total,
                                        expired_total, earned_total, spent_total)
        SELECT * FROM added
        ON CONFLICT (account_id, period, starts) DO UPDATE
        SET total = t.total + excluded.total, entries = t.entries + excluded.entries,
            reversal_total = t.reversal_total + excluded.reversal_total,
            reversal_entries = t.reversal_entries + excluded.reversal_entries,
            capped = t.capped + excluded.capped,
            frozen_total = t.frozen_total + excluded.frozen_total,
            expired_total = t.expired_total + excluded.expired_total,
            earned_total = t.earned_total + excluded.earned_total,
            spent_total = t.spent_total + excluded.spent_total
        RETURNING t.account_id, t.period, t.starts, t.tenant_id, t.points_type, t.total,
                  t.entries, t.reversal_total, t.reversal_entries
    ), moves AS (
        -- Each period total leaves the scores it stood at and takes its new ones.
        SELECT t.tenant_id, t.points_type, t.period, t.starts, k.kind, k.score,
               period_score_shard(t.account_id) AS shard, -1 AS users
        FROM totals t
        JOIN added d USING (account_id, period, starts)
        CROSS JOIN LATERAL period_score_kinds(t.total - d.total, t.entries - d.entries,
                                              t.reversal_total - d.reversal_total,
                                              t.reversal_entries - d.reversal_entries) k
        UNION ALL
        SELECT t.tenant_id, t.points_type, t.period, t.starts, k.kind, k.score,
               period_score_shard(t.account_id), 1
        FROM totals t
        CROSS JOIN LATERAL period_score_kinds(t.total, t.entries, t.reversal_total,
                                              t.reversal_entries) k
    ), scores AS (
        -- In key order, so two appliers sharing scores take their rows in one order.
        INSERT INTO period_scores AS s (tenant_id, points_type, period, starts, kind, score,
                                        shard, users)
        SELECT tenant_id, points_type, period, starts, kind, score, shard, sum(users)
        FROM moves
        GROUP BY 1, 2, 3, 4, 5, 6, 7
        HAVING sum(users) <> 0
        ORDER BY 1, 2, 3, 4, 5, 6, 7
        ON CONFLICT (tenant_id, points_type, period, starts, kind, score, shard) DO UPDATE
        SET users = s.users + excluded.users
    ), applied AS (
        -- Each entry with its request.
        SELECT e.*, r.idempotency_key, r.entry_type AS operation, r.amount AS asked,
               r.batch_id, r.cut, r.user_ref
        FROM entries e JOIN completed r ON r.id = e.request_id
    ), logged AS (
        -- The chunk's events (docs/events.md): its entries, then the requests a caller
        -- made that it applied, each in request order.
        INSERT INTO events (tenant_id, account_id, type, payload)
        SELECT w.tenant_id, w.account_id, x.type, x.payload
        FROM applied w
        CROSS JOIN LATERAL (VALUES
            (0, 'entry.created', jsonb_build_object(
                'entry_id', w.id, 'entry_ulid', w.ulid, 'request_id', w.request_id,
                'type', w.type, 'amount', w.amount, 'frozen_amount', w.frozen_amount,
                'expired', w.expired, 'balance_before', w.balance_before,
                'balance_after', w.balance_after, 'user_id', w.user_ref,
                'points_type', w.points_type, 'reputation_context', w.reputation_context,
                'comment', w.comment, 'reason', w.reason, 'source', w.source,
                'related_id', NULLIF(w.related_id, ''))),
            (1, 'request.applied', jsonb_build_object(
                'request_id', w.request_id, 'idempotency_key', w.idempotency_key,
                'operation', w.operation, 'amount', w.asked, 'user_id', w.user_ref,
                'points_type', w.points_type, 'batch_id', w.batch_id, 'entry_id', w.id,
                'cut', w.cut))
        ) AS x(step, type, payload)
        WHERE x.step = 0 OR w.operation NOT IN ('expire', 'timeout')
        ORDER BY x.step, w.request_id
    )
    SELECT e.request_id, e.id AS entry_id, e.balance_after, e.created_at
    FROM entries e JOIN chain c ON c.request_id = e.request_id
    WHERE c.reported
""")

# The chunk's rejections and their events, after its entries' (docs/events.md, "Order").
MARK_REJECTED = text("""
    WITH rejected AS (
        UPDATE adjustment_requests r
        SET status = 'rejected', error_code = v.code, error_message = v.message,
            attempts = r.attempts + 1, started_at = COALESCE(r.started_at, now()),
            completed_at = now()
        FROM unnest(CAST(:ids AS bigint[]), CAST(:codes AS text[]),
                    CAST(:messages AS text[])) AS v(id, code, message)
        WHERE r.id = v.id
        -- The user's public id as WRITE_ENTRIES finds it.
        RETURNING r.id, r.tenant_id, r.account_id, r.idempotency_key, r.entry_type,
                  r.amount, r.batch_id, r.error_code, r.error_message,
                  (SELECT COALESCE(u.external_id, u.id::text) FROM users u
                   WHERE u.id = r.user_id) AS user_ref
    )
    INSERT INTO events (tenant_id, account_id, type, payload)
    SELECT r.tenant_id, r.account_id, 'request.rejected', jsonb_build_object(
        'request_id', r.id, 'idempotency_key', r.idempotency_key,
        'operation', r.entry_type, 'amount', r.amount,
        'user_id', r.user_ref, 'points_type', a.points_type,
        'batch_id', r.batch_id,
        'error', jsonb_build_object('code', r.error_code, 'message', r.error_message))
    FROM rejected r
    JOIN accounts a ON a.id = r.account_id
    WHERE r.entry_type NOT IN ('expire', 'timeout')
    ORDER BY r.id
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
        expired_at = CASE WHEN v.expired_amount IS NULL THEN NULL
                          ELSE COALESCE(l.expired_at, now()) END
    FROM unnest(CAST(:ulids AS text[]), CAST(:remaining AS bigint[]),
                CAST(:expired AS bigint[])) AS v(ulid, remaining, expired_amount)
    WHERE l.entry_ulid = v.ulid
""")

INSERT_MOVES = text("""
    INSERT INTO lot_moves (entry_ulid, lot_ulid, delta, expired)
    SELECT * FROM unnest(CAST(:entries AS text[]), CAST(:lots AS text[]),
                         CAST(:deltas AS bigint[]), CAST(:expired AS bigint[]))
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

    def __init__(
        self, accounts: dict[str, Account], related: _Related, caps: dict[str, Cap],
        used: dict[str, int], at: datetime,
    ) -> None:  # fmt: skip
        self.accounts = accounts
        # When the entries are made: their ULIDs begin with it (it picks their partition).
        self.at = at
        # The cap of each capped account, and what it has counted towards it this period.
        self.caps = caps
        self.used = used
        self.holds = related.holds
        self.reversed = related.reversed
        self.parts = related.parts
        self.chain = _Chain()
        self.new_lots: list[Lot] = []
        self.decided: list[tuple[Any, str | None]] = []

    def request(self, request: Any) -> None:
        account = self.accounts[request.account_id]
        operation = request.entry_type
        if account.frozen and operation not in SYSTEM_OPERATIONS:
            self.decided.append((request, Rejection.ACCOUNT_FROZEN))
            return
        moves = Moves()
        # Adjustments first: a bulk award is one of a hundred thousand.
        if operation == Operation.ADJUST:
            decided = self._adjust(account, request, moves)
        else:
            decided = self._decide(account, request, moves)
        if isinstance(decided, str):
            self.decided.append((request, decided))
            return
        self.decided.append((request, None))
        ulid = new_ulid(self.at)
        if operation == Operation.ADJUST and decided.amount > 0 and request.expires_at:
            lot = Lot(ulid, decided.amount, 0, request.expires_at, new=True)
            account.lots[ulid] = lot
            self.new_lots.append(lot)
            moves.add(lot, decided.amount)
        self.chain.add(request.id, ulid, account.balance, decided, request.batch_id is None, moves)
        account.book(decided)

    def _adjust(self, account: Account, request: Any, moves: Moves) -> Entry | str:
        """An earn (its lot is made once the entry has its ULID) or a spend."""
        amount = request.amount
        if amount < 0:
            if not account.may_take(-amount, forced=request.allow_negative):
                return Rejection.INSUFFICIENT_BALANCE
            take(account, -amount, moves)
            return Entry(EntryType.ADJUST, amount)
        cap = self.caps.get(account.id)
        if cap is None or cap.exempts(request.reputation_context, request.source):
            return Entry(EntryType.ADJUST, amount)
        room = cap.amount - self.used[account.id]
        if room <= 0 or (amount > room and cap.over == "reject"):
            return Rejection.CAP_REACHED
        applied = min(amount, room)
        self.used[account.id] += applied
        return Entry(EntryType.ADJUST, applied, cut=amount - applied, capped=applied)

    def _decide(self, account: Account, request: Any, moves: Moves) -> Entry | str:
        """The entry of any other operation, or its rejection code."""
        operation = request.entry_type
        if operation == Operation.HOLD:
            if not account.may_take(request.amount, forced=False):
                return Rejection.INSUFFICIENT_BALANCE
            parts = take(account, request.amount, moves)
            self.holds[request.id] = Hold(
                request.id, account.id, request.amount, request.expires_at, parts, new=True
            )
            return Entry(EntryType.HOLD, 0, request.amount)
        if operation in CLOSES_HOLD:
            return self._close_hold(account, request, moves)
        if operation == Operation.EXPIRE:
            return expire(account, request.related_id, moves)
        if operation == Operation.REVERSAL:
            return self._reverse(account, request, moves)
        raise ValueError(f"unknown operation {operation!r} of request {request.id}")

    def _close_hold(self, account: Account, request: Any, moves: Moves) -> Entry | str:
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
            _, rest = split(account, hold.parts, captured)
            expired = give_back(account, rest, moves)
            return Entry(EntryType.CAPTURE, -captured - expired, -hold.amount, expired)
        hold.status = HoldStatus.TIMED_OUT if timeout else HoldStatus.RELEASED
        expired = give_back(account, hold.parts, moves)
        return Entry(EntryType.RELEASE, -expired, -hold.amount, expired)

    def _reverse(self, account: Account, request: Any, moves: Moves) -> Entry | str:
        """Undo an entry: take back an earn (less what of it expired), or give back what a
        spend or a capture took, to the lots it came from."""
        original = self.reversed[request.related_id]
        if original.amount > 0:
            lot = account.lots.get(original.ulid)
            amount = original.amount if lot is None else lot.amount - (lot.expired or 0)
            if amount == 0:
                return Rejection.ALREADY_EXPIRED
            if not account.may_take(amount, forced=request.allow_negative):
                return Rejection.INSUFFICIENT_BALANCE
            if lot is not None:
                moves.add(lot, -amount)
            return Entry(EntryType.REVERSAL, -amount)
        parts = self.parts.get(original.ulid) or {FREE: -(original.amount + original.expired)}
        given = sum(parts.values())
        expired = give_back(account, parts, moves)
        return Entry(EntryType.REVERSAL, given - expired, expired=expired)


def apply_pending(
    session: Session,
    account_ids: Sequence[str],
    limit: int,
    caps: Mapping[str, Cap] | None = None,
    at: datetime | None = None,
) -> Applied:
    """Apply up to `limit` pending requests of these accounts, each account's in order;
    `caps` are the caps by points type (docs/periods.md). The entries are made at `at`,
    by default the database's clock once the accounts are locked (tests name a moment).

    The account rows are locked first, so a second writer (say, one whose Redis
    lock expired) waits here and then sees the requests already applied. The
    caller owns the transaction.
    """
    ids = sorted(set(account_ids))
    accounts: dict[str, Account] = {}
    capped: dict[str, Cap] = {}
    for row in session.execute(LOCK_ACCOUNTS, {"ids": ids}):
        accounts[row.id] = Account(
            row.id,
            row.balance,
            row.frozen_balance,
            row.allow_negative,
            frozen=row.status == AccountStatus.FROZEN,
        )
        if caps and row.points_type in caps:
            capped[row.id] = caps[row.points_type]
    # One row past the limit tells whether another run is needed.
    pending = session.execute(PENDING, {"ids": ids, "limit": limit + 1}).all()
    more = len(pending) > limit
    pending = pending[:limit]
    if not pending:
        return Applied([], more=False)
    at = at or pending[0].now

    walk = _Walk(
        accounts, _load(session, accounts, pending), capped, _used(session, capped, at), at
    )
    for request in pending:
        walk.request(request)

    rejected = [(request.id, code) for request, code in walk.decided if code is not None]
    changed = [a for a in accounts.values() if a.changed]
    entries = _write(session, walk.chain, rejected, changed, at)
    _write_lots(session, accounts, walk.new_lots, walk.chain.moves)
    _write_holds(session, [hold for hold in walk.holds.values() if hold.changed or hold.new])
    outcomes = [_outcome(request, code, entries.get(request.id)) for request, code in walk.decided]
    _count_batches(session, outcomes)
    return Applied(outcomes, more)


def _used(session: Session, caps: dict[str, Cap], at: datetime) -> dict[str, int]:
    """What each capped account has counted towards its cap in the period of `at`."""
    if not caps:
        return {}
    ids = sorted(caps)
    rows = session.execute(CAP_USED, {"ids": ids, "periods": [caps[i].per for i in ids], "at": at})
    return {row.account_id: row.used for row in rows}


@dataclass
class _Related:
    """What the chunk's requests name besides their accounts: the holds they close, the
    entries they reverse, and the parts those holds and entries took (by entry ULID)."""

    holds: dict[int, Hold] = field(default_factory=dict)
    reversed: dict[str, _Reversed] = field(default_factory=dict)
    parts: dict[str, Parts] = field(default_factory=dict)


def _load(session: Session, accounts: dict[str, Account], pending: Sequence[Any]) -> _Related:
    """The lots, holds, reversed entries and moves the chunk needs; none for bulk awards."""
    related = _Related()
    needy = [r for r in pending if r.entry_type != Operation.ADJUST or r.amount < 0]
    if not needy:
        return related
    lot_ulids = {r.related_id for r in needy if r.entry_type == Operation.EXPIRE}
    reversals = sorted({r.related_id for r in needy if r.entry_type == Operation.REVERSAL})
    if reversals:
        for row in session.execute(REVERSED, {"ulids": reversals}):
            related.reversed[row.ulid] = _Reversed(
                row.ulid, row.type, row.amount, row.expired, row.related_id
            )
        lot_ulids |= {e.ulid for e in related.reversed.values() if e.amount > 0}
    captures = {e.ulid: int(e.related_id) for e in related.reversed.values()
                if e.type == EntryType.CAPTURE}  # fmt: skip
    hold_ids = {int(r.related_id) for r in needy if r.entry_type in CLOSES_HOLD}
    holds = list(session.execute(HOLDS, {"ids": sorted(hold_ids | set(captures.values()))}))
    # The moves of the holds' entries (what each hold took) and of the reversed entries.
    movers = [h.entry_ulid for h in holds] + [e.ulid for e in related.reversed.values()]
    moves: dict[str, list[Any]] = {}
    for row in session.execute(MOVES_OF, {"ulids": sorted(movers)}) if movers else ():
        moves.setdefault(row.entry_ulid, []).append(row)
        lot_ulids.add(row.lot_ulid)
    account_ids = sorted({r.account_id for r in needy})
    for row in session.execute(LOTS, {"ids": account_ids, "ulids": sorted(lot_ulids)}):
        accounts[row.account_id].lots[row.entry_ulid] = Lot(
            row.entry_ulid, row.amount, row.remaining, row.expires_at, row.expired_amount
        )
    held = {h.request_id: _taken(moves.get(h.entry_ulid, ()), h.amount) for h in holds}
    for h in holds:
        if h.request_id in hold_ids:
            related.holds[h.request_id] = Hold(
                h.request_id, h.account_id, h.amount, h.expires_at, held[h.request_id], h.status
            )
    for original in related.reversed.values():
        gross = -(original.amount + original.expired)
        if original.ulid in captures:
            related.parts[original.ulid] = _consumed(
                held.get(captures[original.ulid], {}), moves.get(original.ulid, ()), gross
            )
        elif original.amount < 0:
            related.parts[original.ulid] = _taken(moves.get(original.ulid, ()), gross)
    return related


def _taken(moves: Sequence[Any], amount: int) -> Parts:
    """The parts an entry that took `amount` points took: from its lots, the rest free."""
    parts: Parts = {move.lot_ulid: -move.delta for move in moves if move.delta < 0}
    free = amount - sum(parts.values())
    if free:
        parts[FREE] = free
    return parts


def _consumed(held: Parts, moves: Sequence[Any], captured: int) -> Parts:
    """What a capture consumed of its hold's parts: what it did not give back."""
    returned = {move.lot_ulid: move.delta + move.expired for move in moves}
    parts: Parts = {}
    for source, points in held.items():
        if source is not FREE and points - returned.get(source, 0):
            parts[source] = points - returned.get(source, 0)
    free = captured - sum(parts.values())
    if free:
        parts[FREE] = free
    return parts


def _write_lots(
    session: Session,
    accounts: dict[str, Account],
    new: list[Lot],
    moves: list[tuple[str, str, int, int]],
) -> None:
    """Insert the new lots, update the changed ones, and record the moves."""
    if new:
        session.execute(
            INSERT_LOTS,
            {"ulids": [lot.ulid for lot in new], "remaining": [lot.remaining for lot in new]},
        )
    changed = [lot for a in accounts.values() for lot in a.lots.values()
               if lot.changed and not lot.new]  # fmt: skip
    if changed:
        session.execute(
            UPDATE_LOTS,
            {
                "ulids": [lot.ulid for lot in changed],
                "remaining": [lot.remaining for lot in changed],
                "expired": [lot.expired for lot in changed],
            },
        )
    if moves:
        entries, lots, deltas, expired = zip(*moves, strict=True)
        session.execute(
            INSERT_MOVES,
            {"entries": list(entries), "lots": list(lots), "deltas": list(deltas),
             "expired": list(expired)},
        )  # fmt: skip


def _write_holds(session: Session, holds: list[Hold]) -> None:
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
    session: Session,
    chain: _Chain,
    rejected: list[tuple[int, str]],
    accounts: list[Account],
    at: datetime,
) -> dict[int, Any]:
    """Write the chunk, made at `at`; return the ledger entry (id, balance, time) of each
    reported request."""
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
                "expired": chain.expired,
                "cut": chain.cut,
                "capped": chain.capped,
                "reported": chain.reported,
                "at": at,
                "periods": PERIODS,
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
