"""Ledger invariants checked with set-based SQL over every account (SPEC 1, invariants 1, 2, 5)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

# Invariant 1: balance and totals equal the sums of the ledger; no gap in the chain.
BALANCE_MISMATCHES = text("""
    SELECT a.id, a.balance, COALESCE(s.total, 0), a.total_earned, COALESCE(s.earned, 0),
           a.total_spent, COALESCE(s.spent, 0)
    FROM accounts a
    LEFT JOIN (
        SELECT account_id,
               SUM(amount) AS total,
               SUM(amount) FILTER (WHERE amount > 0) AS earned,
               -SUM(amount) FILTER (WHERE amount < 0) AS spent
        FROM ledger_entries GROUP BY account_id
    ) s ON s.account_id = a.id
    WHERE a.balance <> COALESCE(s.total, 0)
       OR a.total_earned <> COALESCE(s.earned, 0)
       OR a.total_spent <> COALESCE(s.spent, 0)
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

# Invariant 2 too: each entry agrees with its request (the entry's only foreign key).
ENTRY_REQUEST_MISMATCHES = text("""
    SELECT e.id, e.request_id
    FROM ledger_entries e JOIN adjustment_requests r ON r.id = e.request_id
    WHERE e.account_id <> r.account_id OR e.tenant_id <> r.tenant_id
       OR e.created_by <> r.created_by OR e.amount <> r.amount
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
    subject: str
    detail: str


@dataclass(frozen=True)
class Report:
    accounts: int
    entries: int
    requests: int
    violations: list[Violation]


def reconcile(session: Session) -> Report:
    """Check invariants 1, 2 and 5 of the whole ledger; list every violation."""
    violations: list[Violation] = []
    for account, balance, total, earned, sum_earned, spent, sum_spent in session.execute(
        BALANCE_MISMATCHES
    ):
        violations.append(
            Violation(
                1,
                f"account {account}",
                f"balance {balance} vs ledger {total}, earned {earned} vs {sum_earned}, "
                f"spent {spent} vs {sum_spent}",
            )
        )
    for account, entry, before, previous in session.execute(CHAIN_BREAKS):
        violations.append(
            Violation(
                1,
                f"account {account}",
                f"entry {entry}: balance_before {before} but previous balance_after {previous}",
            )
        )
    for batch, completed, counted, rejected, counted_rejected in session.execute(BATCH_MISMATCHES):
        violations.append(
            Violation(
                1,
                f"batch {batch}",
                f"completed {completed} vs requests {counted}, "
                f"rejected {rejected} vs {counted_rejected}",
            )
        )
    for request, status, entries in session.execute(REQUEST_MISMATCHES):
        violations.append(
            Violation(2, f"request {request}", f"status {status} with {entries} ledger entries")
        )
    for entry, request in session.execute(ENTRY_REQUEST_MISMATCHES):
        violations.append(
            Violation(
                2,
                f"entry {entry}",
                f"account, tenant, creator or amount differ from request {request}",
            )
        )
    triggers = set(session.scalars(IMMUTABILITY_TRIGGERS))
    for missing in sorted(EXPECTED_TRIGGERS - triggers):
        violations.append(Violation(5, "ledger_entries", f"trigger {missing} missing or disabled"))
    counts = session.execute(
        text(
            "SELECT (SELECT COUNT(*) FROM accounts), (SELECT COUNT(*) FROM ledger_entries),"
            " (SELECT COUNT(*) FROM adjustment_requests)"
        )
    ).one()
    return Report(counts[0], counts[1], counts[2], violations)
