"""Ledger invariants checked with set-based SQL over every account.

SPEC 1's invariants 1, 2 and 5, and those of the points operations (issue 13):
7 held points (frozen_balance), 8 lots, 9 holds, 10 reversals; and those of where
points come from and go back to (docs/points.md): 11 lot moves, 12 points given back;
and 13, the period totals the boards read (docs/periods.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.ledger.periods import SCORES, SUMS

# Invariant 1: balance and totals equal the sums of the ledger; no gap in the chain.
# An entry's expired points count as expired_points; the rest it moved (its gross) as
# earned or spent; frozen_balance is invariant 7's.
BALANCE_MISMATCHES = text("""
    SELECT a.id, a.balance, COALESCE(s.total, 0), a.total_earned, COALESCE(s.earned, 0),
           a.total_spent, COALESCE(s.spent, 0), a.expired_points, COALESCE(s.expired, 0)
    FROM accounts a
    LEFT JOIN (
        SELECT account_id,
               SUM(amount) AS total,
               SUM(amount + expired) FILTER (WHERE amount + expired > 0) AS earned,
               -SUM(amount + expired) FILTER (WHERE amount + expired < 0) AS spent,
               SUM(expired) AS expired
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
# The request rows of a batch accepted before the idempotency window (:window days; 0:
# kept forever) may be deleted: its counts are all that is left of them, unchecked.
BATCH_MISMATCHES = text("""
    SELECT b.id, b.completed, COALESCE(c.completed, 0), b.rejected, COALESCE(c.rejected, 0)
    FROM batches b
    LEFT JOIN (
        SELECT batch_id,
               COUNT(*) FILTER (WHERE status = 'completed') AS completed,
               COUNT(*) FILTER (WHERE status = 'rejected') AS rejected
        FROM adjustment_requests WHERE batch_id IS NOT NULL GROUP BY batch_id
    ) c ON c.batch_id = b.id
    WHERE (b.completed <> COALESCE(c.completed, 0) OR b.rejected <> COALESCE(c.rejected, 0))
      AND (:window = 0 OR b.created_at >= now() - make_interval(days => :window))
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
# adjustment's amount is the request's less what a cap cut; a reversal's giving points
# back is the request's (some of which may expire); a reversal taking points back takes
# no more than asked (the others' the worker works out).
ENTRY_REQUEST_MISMATCHES = text("""
    SELECT e.id, e.request_id
    FROM ledger_entries e JOIN adjustment_requests r ON r.id = e.request_id
    WHERE e.account_id <> r.account_id OR e.tenant_id <> r.tenant_id
       OR e.created_by <> r.created_by
       OR (r.entry_type = 'adjust' AND (e.amount <> r.amount - r.cut OR e.expired <> 0))
       OR (r.entry_type = 'reversal' AND r.amount > 0 AND e.amount + e.expired <> r.amount)
       OR (r.entry_type = 'reversal' AND r.amount < 0
           AND (e.expired <> 0 OR e.amount >= 0 OR e.amount < r.amount))
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

# Invariant 8: a lot matches the entry that earned it and expires at most once; what is
# left in it and what of it expired are the sums of its moves (11); an expired lot has
# nothing left (it may still be owed points); and no lot loses more points than it
# earned: to expiry and to the reversal of its earn (less what other lots' expiries
# repaid of it) together at most its amount, and with what is left and what open holds
# hold of it, no more than its amount either (the rest, spent or captured, is never
# negative).
LOT_MISMATCHES = text("""
    SELECT l.entry_ulid, l.amount, l.remaining, l.expired_amount, COALESCE(m.delta, 0),
           COALESCE(m.expired, 0), COALESCE(m.reversed, 0), COALESCE(h.held, 0),
           COALESCE(x.entries, 0)
    FROM lots l
    LEFT JOIN ledger_entries e ON e.ulid = l.entry_ulid
    LEFT JOIN (
        SELECT related_id, COUNT(*) AS entries FROM ledger_entries
        WHERE type = 'expire' GROUP BY related_id
    ) x ON x.related_id = l.entry_ulid
    LEFT JOIN (
        SELECT m.lot_ulid, SUM(m.delta) AS delta, SUM(m.expired) AS expired,
               -SUM(m.delta) FILTER (WHERE r.type = 'reversal' AND r.related_id = m.lot_ulid)
                 - COALESCE(SUM(m.delta) FILTER (WHERE r.type = 'expire'
                                                 AND r.related_id <> m.lot_ulid), 0)
                   AS reversed
        FROM lot_moves m JOIN ledger_entries r ON r.ulid = m.entry_ulid
        GROUP BY m.lot_ulid
    ) m ON m.lot_ulid = l.entry_ulid
    LEFT JOIN (
        SELECT m.lot_ulid, -SUM(m.delta) AS held
        FROM holds h
        JOIN ledger_entries he ON he.request_id = h.request_id
        JOIN lot_moves m ON m.entry_ulid = he.ulid
        WHERE h.status = 'open' GROUP BY m.lot_ulid
    ) h ON h.lot_ulid = l.entry_ulid
    WHERE e.id IS NULL OR e.account_id <> l.account_id OR e.tenant_id <> l.tenant_id
       OR e.amount <> l.amount
       OR COALESCE(x.entries, 0) > 1
       OR (l.expired_at IS NULL) <> (l.expired_amount IS NULL)
       OR (l.expired_at IS NULL AND COALESCE(x.entries, 0) > 0)
       OR (l.expired_at IS NOT NULL AND l.remaining > 0)
       OR l.remaining <> COALESCE(m.delta, 0)
       OR COALESCE(l.expired_amount, 0) <> COALESCE(m.expired, 0)
       OR COALESCE(m.expired, 0) + COALESCE(m.reversed, 0) > l.amount
       OR l.remaining + COALESCE(h.held, 0) + COALESCE(m.expired, 0) + COALESCE(m.reversed, 0)
          > l.amount
""")

# Invariant 11: lot moves. Every move belongs to an entry of the lot's own account; an
# entry's expired points are the sum of its moves' (none for an entry that moved no
# lot); a spend and a hold only take from lots (never more than they took in all), and
# an earn only puts points into its own lot.
MOVE_MISMATCHES = text("""
    SELECT e.id, e.type FROM ledger_entries e
    JOIN (
        SELECT m.entry_ulid, SUM(m.expired) AS expired,
               BOOL_OR(l.account_id <> e.account_id) AS foreign_lot,
               BOOL_OR(m.delta > 0 OR m.expired > 0) AS gives,
               -SUM(m.delta) AS taken,
               BOOL_OR(m.lot_ulid <> e.ulid) AS other_lot
        FROM lot_moves m
        JOIN lots l ON l.entry_ulid = m.lot_ulid
        JOIN ledger_entries e ON e.ulid = m.entry_ulid
        GROUP BY m.entry_ulid
    ) m ON m.entry_ulid = e.ulid
    WHERE m.foreign_lot OR e.expired <> m.expired
       OR (e.type IN ('adjust', 'earn', 'spend', 'hold') AND e.amount <= 0
           AND (m.gives OR m.taken > GREATEST(-e.amount, e.frozen_amount)))
       OR (e.type IN ('adjust', 'earn') AND e.amount > 0 AND m.other_lot)
    UNION ALL
    SELECT e.id, e.type FROM ledger_entries e
    WHERE e.expired <> 0 AND NOT EXISTS (SELECT 1 FROM lot_moves m WHERE m.entry_ulid = e.ulid)
""")

# Invariant 12: points given back go back to the lots they came from. A released or
# timed-out hold gives each lot back exactly what it took from it (some of which may
# expire there); a capture no more than that; the reversal of a spend gives each lot
# back what the spend took, and the reversal of a capture what the capture kept.
GIVEN_BACK_MISMATCHES = text("""
    WITH taken AS (
        SELECT m.entry_ulid, m.lot_ulid, -m.delta AS points FROM lot_moves m WHERE m.delta < 0
    ), given AS (
        SELECT m.entry_ulid, m.lot_ulid, m.delta + m.expired AS points FROM lot_moves m
    ), closings AS (
        SELECT c.id, c.ulid, c.type, h.status, he.ulid AS hold_ulid
        FROM holds h
        JOIN ledger_entries he ON he.request_id = h.request_id
        JOIN ledger_entries c ON c.request_id = h.closed_by
    ), expected AS (
        SELECT c.id, c.ulid, t.lot_ulid, t.points,
               c.type = 'capture' AS at_most
        FROM closings c JOIN taken t ON t.entry_ulid = c.hold_ulid
        UNION ALL
        SELECT r.id, r.ulid, t.lot_ulid, t.points, false
        FROM ledger_entries r
        JOIN ledger_entries o ON o.ulid = r.related_id AND o.type IN ('adjust', 'spend')
        JOIN taken t ON t.entry_ulid = o.ulid
        WHERE r.type = 'reversal' AND o.amount < 0
        UNION ALL
        SELECT r.id, r.ulid, t.lot_ulid, t.points - COALESCE(g.points, 0), false
        FROM ledger_entries r
        JOIN ledger_entries o ON o.ulid = r.related_id AND o.type = 'capture'
        JOIN closings c ON c.id = o.id
        JOIN taken t ON t.entry_ulid = c.hold_ulid
        LEFT JOIN given g ON g.entry_ulid = o.ulid AND g.lot_ulid = t.lot_ulid
        WHERE r.type = 'reversal'
    )
    SELECT x.id, x.lot_ulid, x.points, COALESCE(g.points, 0)
    FROM expected x LEFT JOIN given g ON g.entry_ulid = x.ulid AND g.lot_ulid = x.lot_ulid
    WHERE (NOT x.at_most AND COALESCE(g.points, 0) <> x.points)
       OR (x.at_most AND (COALESCE(g.points, 0) > x.points OR COALESCE(g.points, 0) < 0))
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
               MIN(expired) AS expired, MIN(frozen_amount) AS frozen
        FROM ledger_entries WHERE type IN ('capture', 'release') GROUP BY related_id
    ) c ON c.related_id = h.request_id::text
    WHERE h.status NOT IN ('open', 'captured', 'released', 'timed_out')
       OR (h.status = 'open') <> (h.closed_by IS NULL)
       OR COALESCE(o.entries, 0) <> 1 OR o.frozen <> h.amount OR o.account_id <> h.account_id
       OR COALESCE(c.entries, 0) <> CASE WHEN h.status = 'open' THEN 0 ELSE 1 END
       OR (h.status = 'captured'
           AND (c.type <> 'capture' OR c.amount + c.expired <> -h.captured))
       OR (h.status IN ('released', 'timed_out')
           AND (c.type <> 'release' OR c.amount + c.expired <> 0))
       OR (h.status <> 'open' AND c.frozen <> -h.amount)
""")

# Invariant 10: a reversal reverses an entry of its own account and tenant that moved
# points, and an entry is reversed at most once. It moves the opposite of what the entry
# moved (before any of it expired), except that the reversal of an earn takes back less
# when some of the earn expired (what its lot lost to expiry, invariant 8).
REVERSAL_MISMATCHES = text("""
    SELECT id, related_id, reversals FROM (
        SELECT r.id, r.related_id,
               COUNT(*) OVER (PARTITION BY r.related_id) AS reversals,
               o.id IS NULL OR o.account_id <> r.account_id OR o.tenant_id <> r.tenant_id
                   OR o.amount + o.expired = 0
                   OR (o.amount < 0 AND r.amount + r.expired <> -(o.amount + o.expired))
                   OR (o.amount > 0 AND (r.amount >= 0 OR r.amount < -o.amount))
                   AS mismatched
        FROM ledger_entries r
        LEFT JOIN ledger_entries o ON o.ulid = r.related_id
        WHERE r.type = 'reversal'
    ) reversals
    WHERE mismatched OR reversals > 1
""")

# A period row's figures, to name them in a violation.
FIGURES = (
    "CASE WHEN {row}.account_id IS NULL THEN 'no row' ELSE format("
    "'total %s, entries %s, reversals %s in %s, frozen %s, expired %s, earned %s, spent %s',"
    " {row}.total, {row}.entries, {row}.reversal_total, {row}.reversal_entries,"
    " {row}.frozen_total, {row}.expired_total, {row}.earned_total, {row}.spent_total) END"
)

# Invariant 13: each account's period totals are the sums of its entries in the period
# (its tenant's calendar), every period with an entry has its row, and no other row is kept.
PERIOD_MISMATCHES = text(f"""
    WITH summed AS ({SUMS})
    SELECT COALESCE(s.account_id, t.account_id), COALESCE(s.period, t.period),
           COALESCE(s.starts, t.starts), {FIGURES.format(row="s")}, {FIGURES.format(row="t")}
    FROM summed s
    FULL JOIN period_totals t
        ON t.account_id = s.account_id AND t.period = s.period AND t.starts = s.starts
    WHERE s.account_id IS NULL OR t.account_id IS NULL OR s.total <> t.total
       OR s.entries <> t.entries OR s.reversal_total <> t.reversal_total
       OR s.reversal_entries <> t.reversal_entries OR s.frozen_total <> t.frozen_total
       OR s.expired_total <> t.expired_total OR s.earned_total <> t.earned_total
       OR s.spent_total <> t.spent_total
""")

# Invariant 13 too: each score of each period's board counts, shard by shard, the period
# totals that stand there (a row left at zero users is kept and means none).
SCORE_MISMATCHES = text(f"""
    WITH counted AS ({SCORES})
    SELECT COALESCE(c.tenant_id, p.tenant_id), COALESCE(c.period, p.period),
           COALESCE(c.starts, p.starts), COALESCE(c.kind, p.kind),
           COALESCE(c.score, p.score), COALESCE(c.shard, p.shard), COALESCE(c.users, 0),
           COALESCE(p.users, 0)
    FROM counted c
    FULL JOIN period_scores p
        ON p.tenant_id = c.tenant_id AND p.points_type = c.points_type
       AND p.period = c.period AND p.starts = c.starts AND p.kind = c.kind
       AND p.score = c.score AND p.shard = c.shard
    WHERE COALESCE(c.users, 0) <> COALESCE(p.users, 0)
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
    # frozen_balance, lot, hold, reversal, lot_moves, given_back, period_totals,
    # period_scores.
    check: str
    subject: str
    detail: str


@dataclass(frozen=True)
class Report:
    accounts: int
    entries: int
    requests: int
    violations: list[Violation]


def reconcile(session: Session, window_days: int = 0) -> Report:
    """Check invariants 1, 2, 5 and 7 to 13 of the whole ledger; list every violation.

    `window_days` is the idempotency window (TALLY_IDEMPOTENCY_WINDOW_DAYS; 0: none):
    the batches accepted before it are not compared with their requests, which may be
    gone.
    """
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
    for batch, completed, counted, rejected, counted_rejected in session.execute(
        BATCH_MISMATCHES, {"window": window_days}
    ):
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
    for row in session.execute(LOT_MISMATCHES):
        lot, amount, remaining, expired, moved, moved_expired, reversed_, held, expiries = row
        violations.append(
            Violation(
                8,
                "lot",
                f"lot {lot}",
                f"amount {amount}, remaining {remaining} (moves {moved}), expired {expired}"
                f" (moves {moved_expired}, {expiries} expire entries), reversed {reversed_},"
                f" held {held}; or its earning entry differs",
            )
        )
    for entry, entry_type in session.execute(MOVE_MISMATCHES):
        violations.append(
            Violation(
                11,
                "lot_moves",
                f"entry {entry}",
                f"its lot moves do not fit a {entry_type} entry (another account's lot, expired"
                " points not those of its moves, a take that gives back or takes too much)",
            )
        )
    for entry, lot, expected, given in session.execute(GIVEN_BACK_MISMATCHES):
        violations.append(
            Violation(
                12,
                "given_back",
                f"entry {entry}",
                f"gave {given} points back to lot {lot}, which the points it gives back took"
                f" {expected} from",
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
    for account, period, starts, summed, kept in session.execute(
        PERIOD_MISMATCHES, {"tenant": None}
    ):
        violations.append(
            Violation(
                13,
                "period_totals",
                f"account {account}",
                f"{period} from {starts}: the entries give {summed}; period_totals keeps {kept}",
            )
        )
    for tenant, period, starts, kind, score, shard, counted, kept in session.execute(
        SCORE_MISMATCHES, {"tenant": None}
    ):
        violations.append(
            Violation(
                13,
                "period_scores",
                f"tenant {tenant}",
                f"{period} from {starts}, {kind} board, score {score} (shard {shard}):"
                f" {counted} period totals stand there, period_scores keeps {kept}",
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
