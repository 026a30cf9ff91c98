"""Input the database refuses is a 400, and the log names what was refused, never the value."""

from __future__ import annotations

import logging

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from api.problems import as_problem


def test_a_value_the_database_refuses_is_logged_without_the_value(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    with sessions() as session, pytest.raises(sqlalchemy.exc.DataError) as raised:
        session.execute(text("SELECT CAST(:email AS integer)"), {"email": "mario@example.com"})
    with caplog.at_level(logging.WARNING):
        problem = as_problem(raised.value)
    assert problem.status == 400
    assert caplog.records, "the refusal is logged"
    assert "mario" not in caplog.text and "example.com" not in caplog.text
    assert "22P02" in caplog.text  # what went wrong, as PostgreSQL names it


def test_a_value_refused_by_a_copy_is_a_400_logged_without_the_value(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """Bulk batches are written with psycopg's COPY, whose errors SQLAlchemy never wraps."""
    with sessions() as session:
        raw = session.connection().connection.driver_connection
        with pytest.raises(psycopg.DataError) as raised, raw.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE copied (email varchar(5))")
            with cursor.copy("COPY copied (email) FROM STDIN") as copy:
                copy.write_row(("mario@example.com",))
    with caplog.at_level(logging.WARNING):
        problem = as_problem(raised.value)
    assert problem.status == 400
    assert "mario" not in caplog.text and "22001" in caplog.text
