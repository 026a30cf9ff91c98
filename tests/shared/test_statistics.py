"""tally's own analyze: a table whose rows changed by a tenth since its last ANALYZE is
analyzed, once; the others are left alone."""

from __future__ import annotations

import time

from sqlalchemy import text

from shared.intake.adjustments import Adjustment
from shared.platform.db import make_engine, make_session_factory
from shared.platform.statistics import analyze_stale
from tests.factories import Factory, queue_adjustments


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
        with engine.connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            # The counters reach the statistics a moment after the commit.
            deadline = time.monotonic() + 10
            analyzed: list[str] = []
            while "adjustment_requests" not in analyzed and time.monotonic() < deadline:
                analyzed += analyze_stale(autocommit)
                time.sleep(0.1)
            assert "adjustment_requests" in analyzed
            assert "ledger_entries" not in analyzed  # nothing written there
            planned = autocommit.scalar(
                text("SELECT reltuples FROM pg_class WHERE relname = 'adjustment_requests'")
            )
            assert planned == 300
            assert "adjustment_requests" not in analyze_stale(autocommit)
    finally:
        engine.dispose()
