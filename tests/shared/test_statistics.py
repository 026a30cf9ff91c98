"""tally's own analyze: a table whose rows changed by a tenth since its last ANALYZE is
analyzed, once; the others are left alone."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from psycopg import sql
from sqlalchemy import Connection, Engine, text

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


def test_an_accept_reads_only_its_own_user_and_account_once_the_users_are_analyzed(
    own_database: str,
) -> None:
    """The accept statement is planned once per connection: psycopg prepares it after its
    first runs there, and PostgreSQL then keeps a generic plan. Planned from a `users`
    table never analyzed, that plan found the user by id through the tenant's index and
    read every user of the tenant on every accept; the maintenance analyzes `users` too,
    after which the plan reads one user and one account however many the tenant has."""
    from shared.intake.adjustments import COLUMNS, SUBMIT_BY_ID, create_account
    from shared.platform.config import load_settings

    engine = make_engine(own_database, pool_size=2)
    try:
        factory = Factory(make_session_factory(engine))
        caller = factory.caller()
        points_type = load_settings().points_types["reputation"]
        with engine.begin() as connection:
            users = connection.scalars(
                text("INSERT INTO users (tenant_id, username, real_name, email, avatar,"
                     " description, role) SELECT :tenant, 'many_' || g, '', '', '', '', 'user'"
                     " FROM generate_series(1, 400) g RETURNING id"),
                {"tenant": factory.tenant_id},
            ).all()  # fmt: skip
            for user_id in users:
                create_account(connection, factory.tenant_id, user_id, points_type)
        with autocommit(engine) as connection:
            assert "analyze users" in maintain_until(connection, "analyze users")

        # The statement's values as shared.intake.adjustments.submit gives them.
        adjustment = Adjustment(user_id=users[-1], points_type="reputation", amount=5)
        values = {name: getattr(adjustment, name) for name in COLUMNS} | {
            "tenant": factory.tenant_id, "target": users[-1], "key": "planned",
            "fingerprint": adjustment.fingerprint(), "created_by": caller.user_id,
        }  # fmt: skip
        nodes = list(plan_nodes(generic_plan(engine, SUBMIT_BY_ID, values)))
        read = {node["Relation Name"]: node["Actual Rows"] for node in nodes
                if node.get("Relation Name") in ("users", "accounts")}  # fmt: skip
        assert read == {"users": 1, "accounts": 1}
        # Each table read at the row it wants: no node reads rows only to drop them.
        filtered = ("Rows Removed by Filter", "Rows Removed by Join Filter")
        removed = [node for node in nodes if any(node.get(key) for key in filtered)]
        assert removed == []
    finally:
        engine.dispose()


def generic_plan(engine: Engine, statement: str, values: dict[str, Any]) -> dict[str, Any]:
    """EXPLAIN ANALYZE of `statement` (written with %(name)s placeholders) run with
    `values` by its generic plan, the one a connection keeps once the statement is
    prepared; in one transaction (a transaction-mode PgBouncer keeps it on one server
    connection), rolled back."""
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", numbered, statement)
    with engine.connect() as connection, connection.begin() as transaction:
        # EXECUTE's arguments as literals: PostgreSQL infers no types for parameters there.
        arguments = sql.SQL(", ").join(sql.Literal(values[name]) for name in names)
        connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        connection.exec_driver_sql(f"PREPARE planned AS {prepared}")
        plan = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE planned("
            + arguments.as_string(connection.connection.driver_connection)
            + ")"
        ).scalar_one()
        connection.exec_driver_sql("DEALLOCATE planned")
        transaction.rollback()
    root: dict[str, Any] = plan[0]["Plan"]
    return root


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)
