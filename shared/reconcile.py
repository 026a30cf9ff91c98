"""Ledger invariants checked with set-based SQL over every account.

SPEC 1's invariants 1, 2 and 5, and those of the points operations (issue 13):
7 held points (frozen_balance), 8 lots, 9 holds, 10 reversals.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

# Invariant 1: balance and totals equal the sums of the ledger; no gap in the chain.
# Expiries count as expired_points, not as spent; frozen_balance is invariant 7's.
BALANCE_MISMATCHES = text("""
    SELECT a.id, a.balance, COALESCE(s.total, 0), a.total_earned, COALESCE(s.earned, 0),
           a.total_spent, COALESCE(s.spent, 0), a.expired_points, COALESCE(s.expired, 0)
    FROM accounts a
    LEFT JOIN (
        SELECT account_id,
               SUM(amount) AS total,
               SUM(amount) FILTER (WHERE amount > 0) AS earned,
               -SUM(amount) FILTER (WHERE amount < 0 AND type <> 'expire') AS spent,
               -SUM(amount) FILTER (WHERE type = 'expire') AS expired
        FROM ledger_entries GROUP BY account_id
    ) s ON s.account_id = a.id
    WHERE a.balance <> COALESCE(s.total, 0)
       OR a.total_earned <> COALESCE(s.earned, 0)
       OR a.total_spent <> COALESCE(s.spent, 0)
       OR a.expired_points <> COALESCE(s.expired, 0)
""")

CHAIN_BREAKS = text("""
    SELECT account_id, id, balance_before, previous_after
    FROM (
        SELECT account_id, id, balance_before, balance_after, amount,
               COALESCE(LAG(balance_after) OVER (PARTITION BY account_id ORDER BY id), 0)
                   AS previous_after
        FROM ledger_entries
    ) chained
    WHERE balance_before <> previous_after OR balance_after <> balance_before + amount
""")

# Invariant 1 for batches: the counts a batch keeps equal its requests' final statuses.
BATCH_MISMATCHES = text("""
    SELECT b.id, b.completed, COALESCE(c.completed, 0), b.rejected, COALESCE(c.rejected, 0)
    FROM batches b
    LEFT JOIN (
        SELECT batch_id,
               COUNT(*) FILTER (WHERE status = 'completed') AS completed,
               COUNT(*) FILTER (WHERE status = 'rejected') AS rejected
        FROM adjustment_requests WHERE batch_id IS NOT NULL GROUP BY batch_id
    ) c ON c.batch_id = b.id
    WHERE b.completed <> COALESCE(c.completed, 0) OR b.rejected <> COALESCE(c.rejected, 0)
""")

# Invariant 2: at most one entry per request, and entries match request outcomes.
REQUEST_MISMATCHES = text("""
    SELECT r.id, r.status, COUNT(e.id)
    FROM adjustment_requests r
    LEFT JOIN ledger_entries e ON e.request_id = r.id
    GROUP BY r.id, r.status
    HAVING COUNT(e.id) > 1
        OR (r.status = 'completed' AND COUNT(e.id) <> 1)
        OR (r.status <> 'completed' AND COUNT(e.id) <> 0)
""")

# Invariant 2 too: each entry agrees with its request (the entry's only foreign key); an
# adjustment's and a reversal's amount is the request's (the others' the worker works out).
ENTRY_REQUEST_MISMATCHES = text("""
    SELECT e.id, e.request_id
    FROM ledger_entries e JOIN adjustment_requests r ON r.id = e.request_id
    WHERE e.account_id <> r.account_id OR e.tenant_id <> r.tenant_id
       OR e.created_by <> r.created_by
       OR (r.entry_type IN ('adjust', 'reversal') AND e.amount <> r.amount)
       OR e.type <> CASE r.entry_type WHEN 'timeout' THEN 'release' ELSE r.entry_type END
""")

# Invariant 7: frozen_balance is what the ledger moved into it and what the open holds
# hold, never negative, and within the balance on a type that forbids negative balances.
FROZEN_MISMATCHES = text("""
    SELECT a.id, a.frozen_balance, COALESCE(e.frozen, 0), COALESCE(h.held, 0), a.balance
    FROM accounts a
    LEFT JOIN (
        SELECT account_id, SUM(frozen_amount) AS frozen FROM ledger_entries
        WHERE frozen_amount <> 0 GROUP BY account_id
    ) e ON e.account_id = a.id
    LEFT JOIN (
        SELECT account_id, SUM(amount) AS held FROM holds WHERE status = 'open'
        GROUP BY account_id
    ) h ON h.account_id = a.id
    WHERE a.frozen_balance <> COALESCE(e.frozen, 0) OR a.frozen_balance <> COALESCE(h.held, 0)
       OR a.frozen_balance < 0
       OR (NOT a.allow_negative AND a.frozen_balance > 0 AND a.frozen_balance > a.balance)
""")

# Invariant 8: a lot keeps 0 <= remaining <= amount, matches the entry that earned it,
# and expires at most once: an expired lot has nothing left, and its expire entries
# (at most one) took exactly what it says it expired.
LOT_MISMATCHES = text("""
    SELECT l.entry_ulid, l.amount, l.remaining, l.expired_amount, COALESCE(x.taken, 0),
           COALESCE(x.entries, 0)
    FROM lots l
    LEFT JOIN ledger_entries e ON e.ulid = l.entry_ulid
    LEFT JOIN (
        SELECT related_id, -SUM(amount) AS taken, COUNT(*) AS entries FROM ledger_entries
        WHERE type = 'expire' GROUP BY related_id
    ) x ON x.related_id = l.entry_ulid
    WHERE l.remaining < 0 OR l.remaining > l.amount
       OR e.id IS NULL OR e.account_id <> l.account_id OR e.tenant_id <> l.tenant_id
       OR e.amount <> l.amount
       OR COALESCE(x.entries, 0) > 1
       OR (l.expired_at IS NULL AND COALESCE(x.entries, 0) > 0)
       OR (l.expired_at IS NOT NULL
           AND (l.remaining <> 0 OR l.expired_amount IS DISTINCT FROM COALESCE(x.taken, 0)))
""")

# Invariant 9: a hold is exactly one of open, captured, released, timed out: one hold
# entry froze its amount, and one closing entry (none while open) of the kind its status
# names unfroze it (a capture taking what the hold says was captured).
HOLD_MISMATCHES = text("""
    SELECT h.request_id, h.status, COALESCE(o.entries, 0), COALESCE(c.entries, 0)
    FROM holds h
    LEFT JOIN (
        SELECT related_id, COUNT(*) AS entries, MIN(frozen_amount) AS frozen,
               MIN(account_id) AS account_id
        FROM ledger_entries WHERE type = 'hold' GROUP BY related_id
    ) o ON o.related_id = h.request_id::text
    LEFT JOIN (
        SELECT related_id, COUNT(*) AS entries, MIN(type) AS type, MIN(amount) AS amount,
               MIN(frozen_amount) AS frozen
        FROM ledger_entries WHERE type IN ('capture', 'release') GROUP BY related_id
    ) c ON c.related_id = h.request_id::text
    WHERE h.status NOT IN ('open', 'captured', 'released', 'timed_out')
       OR (h.status = 'open') <> (h.closed_by IS NULL)
       OR COALESCE(o.entries, 0) <> 1 OR o.frozen <> h.amount OR o.account_id <> h.account_id
       OR COALESCE(c.entries, 0) <> CASE WHEN h.status = 'open' THEN 0 ELSE 1 END
       OR (h.status = 'captured' AND (c.type <> 'capture' OR c.amount <> -h.captured))
       OR (h.status IN ('released', 'timed_out') AND c.type <> 'release')
       OR (h.status <> 'open' AND c.frozen <> -h.amount)
""")

# Invariant 10: a reversal reverses an entry of its own account and tenant, by the
# opposite amount, and an entry is reversed at most once.
REVERSAL_MISMATCHES = text("""
    SELECT id, related_id, reversals FROM (
        SELECT r.id, r.related_id,
               COUNT(*) OVER (PARTITION BY r.related_id) AS reversals,
               o.id IS NULL OR o.account_id <> r.account_id OR o.tenant_id <> r.tenant_id
                   OR o.amount <> -r.amount AS mismatched
        FROM ledger_entries r
        LEFT JOIN ledger_entries o ON o.ulid = r.related_id
        WHERE r.type = 'reversal'
    ) reversals
    WHERE mismatched OR reversals > 1
""")

# Invariant 5: the triggers that refuse UPDATE, DELETE and TRUNCATE are in place and enabled.
IMMUTABILITY_TRIGGERS = text("""
    SELECT tgname FROM pg_trigger
    WHERE tgrelid = 'ledger_entries'::regclass AND NOT tgisinternal AND tgenabled <> 'D'
""")
EXPECTED_TRIGGERS = {"ledger_entries_immutable", "ledger_entries_no_truncate"}


@dataclass(frozen=True)
class Violation:
    invariant: int
    # The check that found it: balance, chain, batch, request, entry, immutability,
    # frozen_balance, lot, hold, reversal.
    check: str
    subject: str
    detail: str


@dataclass(frozen=True)
class Report:
    accounts: int
    entries: int
    requests: int
    violations: list[Violation]


def reconcile(session: Session) -> Report:
    """Check invariants 1, 2, 5 and 7 to 10 of the whole ledger; list every violation."""
    violations: list[Violation] = []
    for row in session.execute(BALANCE_MISMATCHES):
        account, balance, total, earned, sum_earned, spent, sum_spent, expired, sum_expired = row
        violations.append(
            Violation(
                1,
                "balance",
                f"account {account}",
                f"balance {balance} vs ledger {total}, earned {earned} vs {sum_earned}, "
                f"spent {spent} vs {sum_spent}, expired {expired} vs {sum_expired}",
            )
        )
    for account, entry, before, previous in session.execute(CHAIN_BREAKS):
        violations.append(
            Violation(
                1,
                "chain",
                f"account {account}",
                f"entry {entry}: balance_before {before} but previous balance_after {previous}",
            )
        )
    for batch, completed, counted, rejected, counted_rejected in session.execute(BATCH_MISMATCHES):
        violations.append(
            Violation(
                1,
                "batch",
                f"batch {batch}",
                f"completed {completed} vs requests {counted}, "
                f"rejected {rejected} vs {counted_rejected}",
            )
        )
    for request, status, entries in session.execute(REQUEST_MISMATCHES):
        violations.append(
            Violation(
                2, "request", f"request {request}", f"status {status} with {entries} ledger entries"
            )
        )
    for entry, request in session.execute(ENTRY_REQUEST_MISMATCHES):
        violations.append(
            Violation(
                2,
                "entry",
                f"entry {entry}",
                f"account, tenant, creator or amount differ from request {request}",
            )
        )
    for account, frozen, moved, held, balance in session.execute(FROZEN_MISMATCHES):
        violations.append(
            Violation(
                7,
                "frozen_balance",
                f"account {account}",
                f"frozen_balance {frozen} vs ledger {moved} vs open holds {held}"
                f" (balance {balance})",
            )
        )
    for lot, amount, remaining, expired, taken, entries in session.execute(LOT_MISMATCHES):
        violations.append(
            Violation(
                8,
                "lot",
                f"lot {lot}",
                f"amount {amount}, remaining {remaining}, expired {expired} vs {entries}"
                f" expire entries taking {taken}, or its earning entry differs",
            )
        )
    for hold, status, holding, closing in session.execute(HOLD_MISMATCHES):
        violations.append(
            Violation(
                9,
                "hold",
                f"hold {hold}",
                f"status {status} with {holding} hold entries and {closing} closing entries,"
                " or their amounts differ",
            )
        )
    for entry, original, reversals in session.execute(REVERSAL_MISMATCHES):
        violations.append(
            Violation(
                10,
                "reversal",
                f"entry {entry}",
                f"reverses {original!r} ({reversals} reversals of it): no such entry of this"
                " account and tenant, or not its opposite amount, or reversed more than once",
            )
        )
    triggers = set(session.scalars(IMMUTABILITY_TRIGGERS))
    for missing in sorted(EXPECTED_TRIGGERS - triggers):
        violations.append(
            Violation(5, "immutability", "ledger_entries", f"trigger {missing} missing or disabled")
        )
    counts = session.execute(
        text(
            "SELECT (SELECT COUNT(*) FROM accounts), (SELECT COUNT(*) FROM ledger_entries),"
            " (SELECT COUNT(*) FROM adjustment_requests)"
        )
    ).one()
    return Report(counts[0], counts[1], counts[2], violations)
