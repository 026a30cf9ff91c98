"""When PostgreSQL or Redis is unreachable: 503 with Retry-After, never a 500, never a loss."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cli.embedded import free_port
from shared.models import AdjustmentRequest
from tests.factories import Caller, Factory


def test_database_down_is_503_with_retry_after(app_with: Callable[..., Flask]) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/tally"
    client = app_with(database_url=dead).test_client()
    response = client.post(
        "/api/v2/score/",
        json={"user_id": 1, "score": 1, "comment": "x"},
        headers={"Authorization": "Bearer tly_whatever"},
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.mimetype == "application/problem+json"


def test_redis_down_still_accepts_durably(
    app_with: Callable[..., Flask],
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    client: FlaskClient = app_with(redis_url=dead).test_client()
    user = factory.user()
    response = client.post(
        "/api/v2/score/",
        json={"user_id": user.id, "score": 2, "comment": "redis is down"},
        headers=moderator.headers,
    )
    # Accepted: the row is the outbox and the relay publishes it once Redis is back.
    assert response.status_code == 202
    with sessions() as session:
        row = session.get_one(AdjustmentRequest, response.json["id"])
        assert row.status == "queued"


def test_a_connection_cut_after_the_answer_is_not_a_500(
    client: FlaskClient, moderator: Caller, monkeypatch
) -> None:
    import sqlalchemy.exc
    from sqlalchemy.orm import Session

    def cut(self: Session) -> None:
        raise sqlalchemy.exc.OperationalError("ROLLBACK", {}, Exception("terminating connection"))

    # Authenticated once first: the token cache then answers without a session of its own.
    client.get("/api/v2/score/requests/987654321", headers=moderator.headers)
    monkeypatch.setattr(Session, "close", cut)
    response = client.get("/api/v2/score/requests/987654321", headers=moderator.headers)
    monkeypatch.undo()
    assert response.status_code == 404


def test_a_thread_that_waits_past_the_pool_timeout_gets_a_503(
    app_with: Callable[..., Flask], moderator: Caller
) -> None:
    app = app_with(db_pool_size=1, db_pool_timeout=0.2)
    client = app.test_client()
    url = "/api/v2/score/requests/987654321"
    assert client.get(url, headers=moderator.headers).status_code == 404  # token now cached
    engine = app.extensions["tally"].resources.engine
    with engine.connect():  # the pool's only connection, held by "another thread"
        response = client.get(url, headers=moderator.headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert client.get(url, headers=moderator.headers).status_code == 404
