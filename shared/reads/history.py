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

from psycopg import Copy
from psycopg.abc import Buffer
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

# How NDJSON writes a column: a number as its digits; a name (a ULID, or a word that a
# CHECK constraint picks from a list) between quotes, as no character of it needs
# escaping; any other text as `to_json` escapes it (a time as `row_to_json` wrote it).
# Any column may be NULL: JSON's null.
JsonKind = Literal["number", "name", "text"]

# The columns of each export, in order (the CSV header and the NDJSON keys).
EXPORT_COLUMNS: dict[str, tuple[tuple[str, JsonKind], ...]] = {
    "entries": (
        ("e.id", "number"), ("e.ulid", "name"), ("e.request_id", "number"),
        ("e.account_id", "name"), ("a.user_id", "number"), ("u.external_id", "text"),
        ("e.points_type", "text"), ("e.type", "name"), ("e.amount", "number"),
        ("e.frozen_amount", "number"), ("e.expired", "number"),
        ("e.balance_before", "number"), ("e.balance_after", "number"),
        ("e.reputation_type", "number"), ("e.reputation_context", "text"),
        ("e.comment", "text"), ("e.reason", "text"), ("e.source", "text"),
        ("e.related_id", "text"), ("e.idempotency_key", "text"),
        ("e.expires_at", "text"), ("e.created_by", "number"), ("e.created_at", "text"),
    ),
    "requests": (
        ("e.id", "number"), ("e.idempotency_key", "text"), ("e.account_id", "name"),
        ("a.user_id", "number"), ("u.external_id", "text"), ("a.points_type", "text"),
        ("e.entry_type AS operation", "name"), ("e.amount", "number"), ("e.cut", "number"),
        ("e.status", "name"), ("e.error_code", "text"),
        ("e.reputation_context", "text"), ("e.comment", "text"), ("e.reason", "text"),
        ("e.source", "text"), ("e.related_id", "text"), ("e.batch_id", "name"),
        ("e.ledger_entry_id", "number"), ("e.created_by", "number"),
        ("e.created_at", "text"), ("e.completed_at", "text"),
    ),
}  # fmt: skip
EXPORT_TABLES = {"entries": "ledger_entries", "requests": "adjustment_requests"}
# The ledger's months to read (the requests are not partitioned).
EXPORT_BOUNDS = {
    "entries": " AND e.ulid >= %(ulid_from)s AND e.ulid < %(ulid_before)s",
    "requests": "",
}
JSON_VALUES: dict[JsonKind, str] = {
    "number": "{}::text",
    "name": """'"' || {} || '"'""",
    "text": "to_json({})::text",
}
# The bytes gathered before the stream passes them on.
EXPORT_BLOCK = 64 * 1024
# NDJSON's lines of the rows whose ids share id / JSON_GROUP (integer division) come
# from PostgreSQL as one COPY row: the API's work per row (psycopg's read, the framing
# cut off, the copy into a block) is then done once a group. Per exported entry it took
# 1.8 µs of the API's CPU with a row a line, 0.6 µs with groups of 128 (PERFORMANCE.md).
JSON_GROUP = 128
# The memory each of the export's processes (the backend and its parallel workers) may
# sort in. The rows are sorted by id in the workers and spill to disk past this; with
# the default 4 MB, ten million entries took several merge passes over gigabytes of
# temporary files (183,513 rows a second, COPY alone), with 64 MB one (250,705).
EXPORT_WORK_MEM = "64MB"
# A binary COPY: the header before the first row, each row's framing (its count of
# fields, then the one field's length), and the trailer after the last.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = len(COPY_SIGNATURE) + 8
COPY_ROW_FRAMING = 6
COPY_TRAILER = b"\xff\xff"


def _json_line(columns: tuple[tuple[str, JsonKind], ...]) -> str:
    """One row's NDJSON line (its JSON object, then a newline) as a concatenation of
    text, the keys in the columns' order: unlike `row_to_json` over a subquery,
    PostgreSQL's parallel workers build it (and it does not look up each column's type
    again for every row).
    """
    parts = []
    for place, (column, kind) in enumerate(columns):
        expression, _, alias = column.partition(" AS ")
        key = alias or expression.rpartition(".")[2]
        value = JSON_VALUES[kind].format(expression)
        parts.append(f"""'{"{" if place == 0 else ","}"{key}":' || coalesce({value}, 'null')""")
    return " || ".join(parts) + r" || E'}\n'"


def _export_query(kind: ExportKind, as_json: bool) -> str:
    """The export's query: a row per entry (or request) for CSV; for NDJSON, a row per
    group of JSON_GROUP lines, each line ending in a newline."""
    columns = EXPORT_COLUMNS[kind]
    listed = ", ".join(column for column, _ in columns)
    if as_json:
        selected = f"e.id, e.id / {JSON_GROUP} AS part, {_json_line(columns)} AS line"
        order = f"e.id / {JSON_GROUP}, e.id"
    else:
        selected, order = listed, "e.id"
    rows = f"""
        SELECT {selected}
        FROM {EXPORT_TABLES[kind]} e
        JOIN accounts a ON a.id = e.account_id
        JOIN users u ON u.id = a.user_id
        WHERE e.tenant_id = %(tenant)s AND e.id > %(after)s
          AND e.created_at >= %(begins)s AND e.created_at < %(ends)s{EXPORT_BOUNDS[kind]}
        ORDER BY {order}
    """
    if not as_json:
        return rows
    # The lines are built below the grouping (a subquery with ORDER BY is not merged into
    # the query around it), so in PostgreSQL's parallel workers; the subquery's order is
    # the grouping's, so no sort is added above it. The aggregate's own ORDER BY makes the
    # lines' order within a group certain (PostgreSQL 16 sees the input is sorted already).
    return f"""
        SELECT string_agg(line, '' ORDER BY id) FROM ({rows}) lines
        GROUP BY part ORDER BY part
    """


def _json_groups(copy: Copy) -> Iterator[Buffer]:
    """Each row's text from a binary COPY of the one column, its framing cut off."""
    for data in copy:
        row = memoryview(data)
        if row[: len(COPY_SIGNATURE)] == COPY_SIGNATURE:
            row = row[COPY_HEADER:]
        if row != COPY_TRAILER:
            yield row[COPY_ROW_FRAMING:]


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
    id order, as CSV with a header or NDJSON: streamed by PostgreSQL's COPY, its rows
    gathered into blocks of EXPORT_BLOCK bytes, so memory stays flat and what serves
    the stream handles a block, not a row, at a time.

    NDJSON is copied in binary, a group of lines a row (JSON_GROUP): each is the text
    as it is, where CSV or text would scan it for characters to quote or escape.
    """
    as_json = form == "ndjson"
    query = f"COPY ({_export_query(kind, as_json)}) TO STDOUT"
    query += " (FORMAT binary)" if as_json else " (FORMAT csv, HEADER)"
    params = {"tenant": tenant_id, "after": after, **_within(begins, ends)}
    raw = connection.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor:
        # JIT compiling the row's expressions cost more than it saved (8 % of the rate
        # over a million rows).
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(f"SET LOCAL work_mem = '{EXPORT_WORK_MEM}'")
        # NDJSON's groups from the sorted lines as they come: hashing them would hold every
        # group in memory (or on disk) before the first went out.
        cursor.execute("SET LOCAL enable_hashagg = off")
        with cursor.copy(query, params) as copy:
            block = bytearray()
            for rows in _json_groups(copy) if as_json else copy:
                block += rows
                if len(block) >= EXPORT_BLOCK:
                    yield bytes(block)
                    block.clear()
            if block:
                yield bytes(block)
