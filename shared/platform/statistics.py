"""Planner statistics kept fresh by tally itself, for databases where autovacuum's
analyze is off or runs behind a bulk load.

PostgreSQL plans each statement from its tables' statistics. A table analyzed when it
was empty (a new database) or before a load of a million rows is planned as if it were
still small: sequential scans and nested loops that cost seconds on millions of rows.
`analyze_stale` analyzes each of the tables tally writes and reads once its rows changed
by more than autovacuum's default threshold (50 rows plus a tenth of the table) since
its last analyze, by anyone; beat asks for it every TALLY_ANALYZE_INTERVAL seconds.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# The tables whose plans matter (names from this fixed list only: they are interpolated).
TABLES = (
    "accounts",
    "adjustment_requests",
    "ledger_entries",
    "period_totals",
    "lots",
    "lot_moves",
    "holds",
    "batches",
    "events",
    "webhook_deliveries",
)

STALE = text("""
    SELECT relname FROM pg_stat_user_tables
    WHERE schemaname = current_schema() AND relname = ANY(:tables)
      AND n_mod_since_analyze > 50 + 0.1 * GREATEST(n_live_tup - n_mod_since_analyze, 0)
    ORDER BY relname
""")


def analyze_stale(connection: Connection) -> list[str]:
    """ANALYZE every table of TABLES whose statistics are stale; return their names.

    Each in a statement of its own on an autocommit connection: ANALYZE takes a lock that
    only another ANALYZE or VACUUM waits for, and sampling a table costs well under a
    second whatever its size.
    """
    stale = list(connection.scalars(STALE, {"tables": list(TABLES)}))
    for table in stale:
        if table in TABLES:
            connection.execute(text(f"ANALYZE {table}"))
    return stale
