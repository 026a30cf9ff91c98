"""The ledger's monthly partitions (migration 0011): made ahead of time, and listed.

An entry goes to the partition of the month (UTC) its ULID was made in, which is its
`created_at`. A month without a partition cannot take entries, so the beat makes the
partitions of the next `MONTHS_AHEAD` months every hour. How far ahead they reach is
the gauge `tally_ledger_partitions_ahead_seconds` (alert TallyLedgerPartitionsRunningOut);
`tally db partitions` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session
from ulid import ULID

MONTHS_AHEAD = 3

# Entries made before migration 0011 carry a ULID of the application's clock, taken a
# moment apart from their `created_at` (the database's clock, in the same transaction);
# the ULID bounds of a read are widened by this much so that they never leave one out.
SLACK = timedelta(days=1)

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


def ulid_floor(at: datetime, shift: timedelta = timedelta(0)) -> str:
    """The least ULID made at `at` + `shift` (the twin of the SQL function ulid_floor()),
    held within the ULIDs' range of time."""
    milliseconds = int((at.timestamp() + shift.total_seconds()) * 1000)
    return str(ULID.from_timestamp(min(max(milliseconds, 0), 2**48 - 1)))[:10] + "0" * 16


def ulids_from(at: datetime) -> str:
    """A ULID at or below that of every entry made at or after `at`: a read's lower bound
    on `ulid`, beside its bound on `created_at`, lets PostgreSQL skip the earlier
    partitions (and plan only the others)."""
    return ulid_floor(at, -SLACK)


def ulids_before(at: datetime) -> str:
    """A ULID above that of every entry made before `at`: a read's upper bound."""
    return ulid_floor(at, SLACK)


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
