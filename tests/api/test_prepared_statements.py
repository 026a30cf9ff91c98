"""Requests leave their connection's prepared statements in place.

psycopg prepares a statement on its fifth run on a connection, and forgets every
statement it prepared there when a transaction on the connection is rolled back. The
API reads a waited request's outcome once the worker has applied it; that read ended
in a rollback, so the accept statement and the read itself were parsed and planned
again on nearly every request (PERFORMANCE.md, "Statements planned again").
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.accept import FINAL_STATE
from shared.intake.adjustments import SUBMIT_BY_ID
from shared.platform.db import end_unwritten, make_engine
from tests.conftest import Services
from tests.factories import Caller, Factory

RUNS = 8  # psycopg prepares on the fifth


def test_waited_adjustments_keep_their_statements_prepared(
    app_with: Callable[..., Flask],
    worker: None,
    services: Services,
    factory: Factory,
    moderator: Caller,
) -> None:
    # One connection, so every request's statements run on the one inspected below.
    app = app_with(db_pool_size=1)
    client = app.test_client()
    user = factory.user()
    for run in range(RUNS):
        response = client.post(
            "/api/v2/score/",
            json={"user_id": user.id, "score": 1, "comment": f"run {run}"},
            headers=moderator.headers | {"Prefer": "wait=10"},
        )
        assert response.status_code == 201, response.json

    # psycopg sends a statement with its placeholders numbered: compare the words before
    # the first one.
    heads = [" ".join(statement.split()[:12]) for statement in (SUBMIT_BY_ID, str(FINAL_STATE))]
    assert_kept(services, prepared_statements(app), heads)


def assert_kept(services: Services, held: list[str], heads: list[str]) -> None:
    """Each statement that starts with one of `heads` is held prepared; behind a
    transaction-mode PgBouncer (the suite's TALLY_TEST_PGBOUNCER run) none is, as tally
    prepares nothing there (TALLY_DATABASE_PREPARED_STATEMENTS=false)."""
    if not services.prepared_statements:
        assert held == []
        return
    for head in heads:
        assert any(head in sql for sql in held), (head, held)


def prepared_statements(app: Flask) -> list[str]:
    """The statements PostgreSQL holds prepared on the app's (one) connection, their words
    joined by single spaces."""
    engine = app.extensions["tally"].resources.engine
    with engine.connect() as connection:
        held = connection.scalars(text("SELECT statement FROM pg_prepared_statements")).all()
    return [" ".join(statement.split()) for statement in held]


def test_a_read_route_keeps_its_statements_prepared(
    app_with: Callable[..., Flask], services: Services, moderator: Caller
) -> None:
    """A request that only reads ends its transaction with a commit (db.end_unwritten)."""
    app = app_with(db_pool_size=1)
    client = app.test_client()
    for _ in range(RUNS):
        response = client.get("/api/v2/score/leaderboard/", headers=moderator.headers)
        assert response.status_code == 200, response.json
    assert_kept(services, prepared_statements(app), ["FROM period_scores"])


def test_a_session_ended_unwritten_keeps_no_write_it_did_not_commit(
    own_database: str, services: Services
) -> None:
    engine = make_engine(
        own_database, pool_size=1, prepared_statements=services.prepared_statements
    )
    try:
        with Session(engine) as session:
            session.execute(text("INSERT INTO tenants (id, name) VALUES ('unkept', 'x')"))
            end_unwritten(session)
        with Session(engine) as session:
            for _ in range(RUNS):
                session.scalar(text("SELECT count(*) FROM tenants WHERE id = :id"), {"id": "x"})
            end_unwritten(session)
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT count(*) FROM tenants WHERE id = 'unkept'")) == 0
            held = connection.scalars(text("SELECT statement FROM pg_prepared_statements")).all()
        assert_kept(services, [" ".join(sql.split()) for sql in held], ["FROM tenants WHERE id"])
    finally:
        engine.dispose()
