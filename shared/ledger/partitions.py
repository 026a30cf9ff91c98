"""The ledger's monthly partitions (migration 0011): made ahead of time, and listed.

An entry goes to the partition of the month (UTC) its ULID was made in, which is its
`created_at`. A month without a partition cannot take entries, so the beat makes the
partitions of the next `MONTHS_AHEAD` months every hour. How far ahead they reach is
the gauge `tally_ledger_partitions_ahead_seconds` (alert TallyLedgerPartitionsRunningOut);
`tally db partitions` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

MONTHS_AHEAD = 3

# ledger_entries_partition() (migration 0011) makes a month's partition if missing; it
# gives NULL for a month that another partition already holds.
MAKE_AHEAD = text("""
    SELECT ledger_entries_partition(
        CAST(date_trunc('month', CAST(:at AS timestamptz) AT TIME ZONE 'UTC')
             + ahead * interval '1 month' AS date))
    FROM generate_series(0, :months) AS ahead
""")

# Seconds from now to the end of the last monthly partition (0 if there is none).
PARTITIONS_AHEAD_SECONDS = """
    SELECT COALESCE(EXTRACT(EPOCH FROM
               max(to_date(right(c.relname, 7), 'YYYY_MM') + interval '1 month')
               AT TIME ZONE 'UTC' - now()), 0)
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'ledger_entries'::regclass AND c.relname ~ '_[0-9]{4}_[0-9]{2}$'
"""

PARTITIONS = text("""
    SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bounds,
           c.reltuples AS rows, pg_total_relation_size(c.oid) AS bytes
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'ledger_entries'::regclass
    ORDER BY pg_get_expr(c.relpartbound, c.oid) LIKE '%MINVALUE%' DESC, c.relname
""")


@dataclass(frozen=True)
class Partition:
    name: str
    bounds: str
    rows: int  # PostgreSQL's estimate (-1 before the first ANALYZE)
    bytes: int  # table, indexes and TOAST


def make_partitions_ahead(session: Session, at: datetime, months: int = MONTHS_AHEAD) -> list[str]:
    """Make the partitions of `at`'s month and the `months` after it where missing; return
    the names of those months' partitions (the one already holding a month is not named)."""
    rows = session.execute(MAKE_AHEAD, {"at": at, "months": months}).scalars()
    return [name for name in rows if name is not None]


def partitions(connection: Connection | Session) -> list[Partition]:
    """The ledger's partitions, the first (`ledger_entries_initial`) first."""
    return [
        Partition(row.name, row.bounds, int(row.rows), int(row.bytes))
        for row in connection.execute(PARTITIONS)
    ]
