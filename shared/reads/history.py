"""The ledger's history: accounts as they were at a moment, statements, and the export.

An account's entries are made in time order (the applier stamps a chunk once its
accounts are locked), so the state at a moment is what its entries up to that moment
made: the sums of their figures, as reconcile counts them. Whole months are read from
the month rows the applier keeps in `period_totals`, the rest from the entries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from shared.ledger.partitions import ulids_before, ulids_from
from shared.ledger.periods import ENTRY_FIGURES

# Each account as its entries made before :before left it (without any: all zero): the
# figures its month rows of `period_totals` keep for the months before the one :before
# falls in, in its tenant's time zone (`past`), plus what that month's entries made up to
# :before (`part`, summed as the period totals are).
# The balance is a sum like the others: the chain makes it one (reconcile's invariant 1).
# :ulid_from lies before the month's first moment in any time zone, so that only the
# ledger's partitions of that month and the one before are planned and read.
AS_OF = text(f"""
    SELECT a.id,
           COALESCE(past.total, 0) + COALESCE(part.total, 0) AS balance,
           COALESCE(past.frozen_total, 0) + COALESCE(part.frozen_total, 0) AS frozen_balance,
           COALESCE(past.expired_total, 0) + COALESCE(part.expired_total, 0) AS expired_points,
           COALESCE(past.earned_total, 0) + COALESCE(part.earned_total, 0) AS total_earned,
           COALESCE(past.spent_total, 0) + COALESCE(part.spent_total, 0) AS total_spent,
           COALESCE(past.entries, 0) + COALESCE(part.entries, 0) AS entries
    FROM accounts a
    JOIN tenants tn ON tn.id = a.tenant_id
    CROSS JOIN LATERAL (
        SELECT date_trunc('month', CAST(:before AS timestamptz) AT TIME ZONE tn.time_zone)
            AS starts
    ) this_month
    LEFT JOIN LATERAL (
        SELECT sum(total) AS total, sum(entries) AS entries,
               sum(frozen_total) AS frozen_total, sum(expired_total) AS expired_total,
               sum(earned_total) AS earned_total, sum(spent_total) AS spent_total
        FROM period_totals t
        WHERE t.account_id = a.id AND t.period = 'month'
          AND t.starts < CAST(this_month.starts AS date)
    ) past ON true
    LEFT JOIN LATERAL (
        SELECT {ENTRY_FIGURES}
        FROM ledger_entries e
        WHERE e.account_id = a.id
          AND e.created_at >= this_month.starts AT TIME ZONE tn.time_zone
          AND e.created_at < :before AND e.ulid >= :ulid_from AND e.ulid < :ulid_before
    ) part ON true
    WHERE a.id = ANY(:ids)
""")

# How far before a moment its month may begin, in any time zone (a month of 31 days,
# and a zone 14 hours behind UTC).
MONTH_REACH = timedelta(days=32)


@dataclass(frozen=True)
class Standing:
    """An account's figures at a moment."""

    balance: int
    frozen_balance: int
    expired_points: int
    total_earned: int
    total_spent: int
    # How many entries it had by then.
    entries: int


ZERO = Standing(0, 0, 0, 0, 0, 0)


def _within(begins: datetime, ends: datetime) -> dict[str, Any]:
    """The parameters of entries made in [begins, ends): the times, and the ULID bounds
    that let PostgreSQL plan and read only the partitions of those months."""
    return {
        "begins": begins, "ends": ends,
        "ulid_from": ulids_from(begins), "ulid_before": ulids_before(ends),
    }  # fmt: skip


MICROSECOND = timedelta(microseconds=1)


def standings(session: Session, account_ids: Sequence[str], at: datetime) -> dict[str, Standing]:
    """Each account as it stood at `at`: after every entry made at or before it (times
    are kept to the microsecond)."""
    return _before(session, account_ids, at + MICROSECOND)


def _before(session: Session, account_ids: Sequence[str], before: datetime) -> dict[str, Standing]:
    rows = session.execute(
        AS_OF,
        {"ids": list(account_ids), "before": before,
         "ulid_from": ulids_from(before - MONTH_REACH), "ulid_before": ulids_before(before)},
    )  # fmt: skip
    return {row.id: _standing(row) for row in rows}


# The entries of a statement: [from, to), after the cursor's entry, in chain order (time,
# then id: the index on (account_id, created_at, id) serves it).
STATEMENT_ENTRIES = text("""
    SELECT id, ulid, request_id, type, amount, frozen_amount, expired, balance_before,
           balance_after, reputation_context, comment, reason, source, related_id,
           idempotency_key, created_at
    FROM ledger_entries
    WHERE account_id = :account AND created_at >= :begins AND created_at < :ends
      AND ulid >= :ulid_from AND ulid < :ulid_before
      AND (created_at, id) > (:after_at, :after)
    ORDER BY created_at, id
    LIMIT :limit
""")
CURSOR_ENTRY = text(
    "SELECT created_at FROM ledger_entries WHERE id = :id AND account_id = :account"
)

# Sums by entry type over [from, to).
STATEMENT_TOTALS = text("""
    SELECT type, sum(amount) AS amount, count(*) AS entries
    FROM ledger_entries
    WHERE account_id = :account AND created_at >= :begins AND created_at < :ends
      AND ulid >= :ulid_from AND ulid < :ulid_before
    GROUP BY type ORDER BY type
""")


@dataclass(frozen=True)
class Statement:
    """An account over [begins, ends): how it opened and closed, totals by entry type,
    and a page of its entries (`next_after` resumes the page; None at the end)."""

    opening: Standing
    closing: Standing
    totals: dict[str, tuple[int, int]]
    entries: list[Any]
    next_after: int | None


def statement(
    session: Session, account_id: str | None, begins: datetime, ends: datetime, after: int,
    limit: int,
) -> Statement:  # fmt: skip
    """The statement of one account (None: a user with no account of the type: empty)."""
    if account_id is None:
        return Statement(ZERO, ZERO, {}, [], None)
    # Opening: everything strictly before `begins`, as the range starts at it.
    opening = _before(session, [account_id], begins)[account_id]
    closing = _before(session, [account_id], ends)[account_id]
    totals = {
        row.type: (int(row.amount), int(row.entries))
        for row in session.execute(
            STATEMENT_TOTALS, {"account": account_id, **_within(begins, ends)}
        )
    }
    after_at = begins
    if after:
        after_at = session.scalar(CURSOR_ENTRY, {"id": after, "account": account_id})
        if after_at is None:
            raise ValueError(f"entry {after} is not one of this account's")
    rows = session.execute(
        STATEMENT_ENTRIES,
        {"account": account_id, **_within(begins, ends), "after": after,
         "after_at": after_at, "limit": limit + 1},
    ).all()  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    return Statement(opening, closing, totals, list(rows), rows[-1].id if more else None)


def _standing(row: Any) -> Standing:
    return Standing(
        int(row.balance), int(row.frozen_balance), int(row.expired_points),
        int(row.total_earned), int(row.total_spent), int(row.entries),
    )  # fmt: skip


ExportKind = Literal["entries", "requests"]
ExportFormat = Literal["ndjson", "csv"]

# The columns of each export, in order (the CSV header).
EXPORT_COLUMNS: dict[str, str] = {
    "entries": """e.id, e.ulid, e.request_id, e.account_id, a.user_id, u.external_id,
        e.points_type, e.type, e.amount, e.frozen_amount, e.expired, e.balance_before,
        e.balance_after, e.reputation_type, e.reputation_context, e.comment, e.reason,
        e.source, e.related_id, e.idempotency_key, e.expires_at, e.created_by,
        e.created_at""",
    "requests": """e.id, e.idempotency_key, e.account_id, a.user_id, u.external_id,
        a.points_type, e.entry_type AS operation, e.amount, e.cut, e.status, e.error_code,
        e.reputation_context, e.comment, e.reason, e.source, e.related_id, e.batch_id,
        e.ledger_entry_id, e.created_by, e.created_at, e.completed_at""",
}
EXPORT_TABLES = {"entries": "ledger_entries", "requests": "adjustment_requests"}
# The ledger's months to read (the requests are not partitioned).
EXPORT_BOUNDS = {
    "entries": " AND e.ulid >= %(ulid_from)s AND e.ulid < %(ulid_before)s",
    "requests": "",
}


def _export_query(kind: ExportKind, as_json: bool) -> str:
    columns = EXPORT_COLUMNS[kind]
    select = f"""
        SELECT {columns}
        FROM {EXPORT_TABLES[kind]} e
        JOIN accounts a ON a.id = e.account_id
        JOIN users u ON u.id = a.user_id
        WHERE e.tenant_id = %(tenant)s AND e.id > %(after)s
          AND e.created_at >= %(begins)s AND e.created_at < %(ends)s{EXPORT_BOUNDS[kind]}
        ORDER BY e.id
    """
    if not as_json:
        return select
    # One JSON object per row, the columns in order.
    return f"SELECT row_to_json(r)::text FROM ({select}) r"


def export(
    connection: Connection,
    tenant_id: str,
    kind: ExportKind,
    form: ExportFormat,
    begins: datetime,
    ends: datetime,
    after: int,
) -> Iterator[bytes]:
    """The tenant's entries (or requests) of [begins, ends) with an id above `after`, in
    id order, as CSV with a header or NDJSON: streamed by PostgreSQL's COPY in blocks,
    so memory stays flat and no row passes through Python one by one.

    NDJSON is copied as CSV with a quote and a delimiter that JSON text never holds
    raw (it escapes control characters), so each line is the JSON object unquoted.
    """
    query = _export_query(kind, form == "ndjson")
    if form == "csv":
        options = "FORMAT csv, HEADER"
    else:
        options = "FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02'"
    params = {"tenant": tenant_id, "after": after, **_within(begins, ends)}
    raw = connection.connection.driver_connection
    assert raw is not None
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY ({query}) TO STDOUT ({options})", params) as copy,
    ):
        for block in copy:
            yield bytes(block)
