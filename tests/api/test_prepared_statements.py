"""A waited adjustment leaves its connection's prepared statements in place.

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

from api.accept import FINAL_STATE
from shared.intake.adjustments import SUBMIT_BY_ID
from tests.factories import Caller, Factory

RUNS = 8  # psycopg prepares on the fifth


def test_waited_adjustments_keep_their_statements_prepared(
    app_with: Callable[..., Flask], worker: None, factory: Factory, moderator: Caller
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

    engine = app.extensions["tally"].resources.engine
    with engine.connect() as connection:
        prepared = connection.scalars(text("SELECT statement FROM pg_prepared_statements")).all()
    # psycopg sends a statement with its placeholders numbered: compare the words before
    # the first one.
    held = [" ".join(statement.split()) for statement in prepared]
    for statement in (SUBMIT_BY_ID, str(FINAL_STATE)):
        head = " ".join(statement.split()[:12])
        assert any(sql.startswith(head) for sql in held), (head, held)
