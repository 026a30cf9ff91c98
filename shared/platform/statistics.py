"""Planner statistics and visibility kept fresh by tally itself, for databases where
autovacuum is off or runs behind the writes.

PostgreSQL plans each statement from its tables' statistics. A table analyzed when it
was empty (a new database) or before a load of a million rows is planned as if it were
still small: sequential scans and nested loops that cost seconds on millions of rows.
`maintain` analyzes each of the tables tally writes and reads once its rows changed by
more than autovacuum's default threshold (50 rows plus a tenth of the table) since its
last analyze, by anyone.

It also vacuums `period_totals` and `period_scores` once a hundredth of their rows are
dead: every entry updates six period totals and moves their scores. The boards' pages
are index-only scans of `period_totals`, which must visit the table for every row of a
page the visibility map does not mark all-visible (on ten million entries, a year's
board counted in 640 ms before a vacuum and 22 ms after it, when boards still counted
their rows); `period_scores` is small, and a vacuum keeps it so. Beat asks for both
every TALLY_ANALYZE_INTERVAL seconds.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# The tables whose plans matter (names from this fixed list only: they are interpolated).
# `users` too: the accept statement finds its user by (tenant, id), and a plan made from a
# `users` never analyzed took the tenant's index for it and read every user of the tenant.
TABLES = (
    "users",
    "accounts",
    "adjustment_requests",
    "ledger_entries",
    "period_totals",
    "period_scores",
    "lots",
    "lot_moves",
    "holds",
    "batches",
    "events",
    "webhook_deliveries",
)
# The tables read on every board while their rows are updated.
VACUUMED = ("period_totals", "period_scores")

# A partitioned table (the ledger, migration 0011) has no counters of its own: its
# partitions' are summed, and its ANALYZE samples them all (autovacuum analyzes the
# partitions but never the table the planner estimates joins and groups with).
STALE = text("""
    SELECT name FROM (
        SELECT COALESCE(parent.relname, s.relname) AS name,
               sum(s.n_mod_since_analyze) AS changed, sum(s.n_live_tup) AS live
        FROM pg_stat_user_tables s
        LEFT JOIN pg_inherits i ON i.inhrelid = s.relid
        LEFT JOIN pg_class parent ON parent.oid = i.inhparent
        WHERE s.schemaname = current_schema()
        GROUP BY 1
    ) t
    WHERE name = ANY(:tables) AND changed > 50 + 0.1 * GREATEST(live - changed, 0)
    ORDER BY name
""")
DEAD = text("""
    SELECT relname FROM pg_stat_user_tables
    WHERE schemaname = current_schema() AND relname = ANY(:tables)
      AND n_dead_tup > 1000 + 0.01 * n_live_tup
    ORDER BY relname
""")


def maintain(connection: Connection) -> list[str]:
    """VACUUM the tables of VACUUMED with many dead rows, ANALYZE every table of TABLES
    whose statistics are stale; return what was done ("vacuum period_totals", ...).

    Each in a statement of its own on an autocommit connection: neither takes a lock
    that the API's or the workers' statements wait for.
    """
    done = []
    for table in connection.scalars(DEAD, {"tables": list(VACUUMED)}):
        if table in VACUUMED:
            connection.execute(text(f"VACUUM (ANALYZE) {table}"))
            done.append(f"vacuum {table}")
    for table in connection.scalars(STALE, {"tables": list(TABLES)}):
        if table in TABLES and f"vacuum {table}" not in done:
            connection.execute(text(f"ANALYZE {table}"))
            done.append(f"analyze {table}")
    return done
