"""tally's own analyze: a table whose rows changed by a tenth since its last ANALYZE is
analyzed, once; the others are left alone."""

from __future__ import annotations

import time

from sqlalchemy import Connection, text

from shared.intake.adjustments import Adjustment
from shared.platform.db import autocommit, make_engine, make_session_factory
from shared.platform.statistics import maintain
from tests.factories import Factory, queue_adjustments


def maintain_until(connection: Connection, wanted: str) -> list[str]:
    """Run the maintenance until it did `wanted` or 10 s passed (the statistics counters
    reach PostgreSQL's views a moment after the commit); what it did, in all."""
    deadline = time.monotonic() + 10
    done: list[str] = []
    while wanted not in done and time.monotonic() < deadline:
        done += maintain(connection)
        time.sleep(0.1)
    return done


def test_a_table_loaded_since_its_last_analyze_is_analyzed_once(own_database: str) -> None:
    engine = make_engine(own_database, pool_size=2)
    try:
        sessions = make_session_factory(engine)
        factory = Factory(sessions)
        caller = factory.caller()
        user = factory.user()
        queue_adjustments(
            sessions, caller,
            [Adjustment(user_id=user.id, points_type="reputation", amount=1, comment=str(n))
             for n in range(300)],
        )  # fmt: skip
        with autocommit(engine) as connection:
            analyzed = maintain_until(connection, "analyze adjustment_requests")
            assert "analyze adjustment_requests" in analyzed
            assert "analyze ledger_entries" not in analyzed  # nothing written there
            planned = connection.scalar(
                text("SELECT reltuples FROM pg_class WHERE relname = 'adjustment_requests'")
            )
            assert planned == 300
            assert "analyze adjustment_requests" not in maintain(connection)
    finally:
        engine.dispose()


def test_the_partitioned_ledger_is_analyzed_once_its_partitions_changed(
    own_database: str,
) -> None:
    """The ledger's own counters are its partitions': once they changed by a tenth, the
    whole table is analyzed (its inherited statistics, which autovacuum never makes, and
    each partition's), once."""
    from shared.ledger.apply import apply_pending
    from shared.platform.db import transaction

    engine = make_engine(own_database, pool_size=2)
    try:
        sessions = make_session_factory(engine)
        factory = Factory(sessions)
        caller, user = factory.caller(), factory.user()
        (account, *_) = queue_adjustments(
            sessions, caller,
            [Adjustment(user_id=user.id, points_type="reputation", amount=1, comment=str(n))
             for n in range(300)],
        )  # fmt: skip
        with transaction(sessions) as session:
            apply_pending(session, [account], 1000)
        with autocommit(engine) as connection:
            analyzed = maintain_until(connection, "analyze ledger_entries")
            assert "analyze ledger_entries" in analyzed
            inherited = connection.scalar(
                text("SELECT count(*) FROM pg_stats WHERE tablename = 'ledger_entries'"
                     " AND inherited")
            )  # fmt: skip
            assert inherited > 0
            assert "analyze ledger_entries" not in maintain(connection)
    finally:
        engine.dispose()


def test_period_totals_with_many_dead_rows_are_vacuumed(own_database: str) -> None:
    """Every applied chunk updates an account's six period rows: 250 chunks leave 1,500
    dead rows, which the maintenance vacuums away (the boards' index-only scans then
    need not visit the table)."""
    from shared.ledger.apply import apply_pending
    from shared.platform.db import transaction

    engine = make_engine(own_database, pool_size=2)
    try:
        sessions = make_session_factory(engine)
        factory = Factory(sessions)
        caller, user = factory.caller(), factory.user()
        for n in range(250):
            adjustment = Adjustment(
                user_id=user.id, points_type="reputation", amount=1, comment=str(n)
            )
            (account,) = queue_adjustments(sessions, caller, [adjustment])
            with transaction(sessions) as session:
                apply_pending(session, [account], 10)
        with autocommit(engine) as connection:
            done = maintain_until(connection, "vacuum period_totals")
            assert "vacuum period_totals" in done
            dead = connection.scalar(
                text("SELECT n_dead_tup FROM pg_stat_user_tables"
                     " WHERE relname = 'period_totals'")
            )  # fmt: skip
            assert dead < 1000
    finally:
        engine.dispose()
