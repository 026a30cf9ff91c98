"""POST /api/v2/score/: seeds 000 and 001, the 201 answer, the 409 rejection."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Account
from tests.factories import Caller, Factory, assert_ledger_consistent, ledger_of

SEED_000_BODY = {
    "username": "mario.rossi",
    "score": 10,
    "reputation_context": "contest|first_place|apis",
    "comment": "Winner of the APIS contest",
}


def test_seed_000_example_answers_201_with_the_score_object(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    mario = factory.user("mario.rossi", real_name="Mario Rossi")
    first = client.post("/api/v2/score/", json=SEED_000_BODY, headers=moderator.headers)
    second = client.post("/api/v2/score/", json=SEED_000_BODY, headers=moderator.headers)

    assert first.status_code == 201, first.json
    body = second.json
    assert second.status_code == 201
    assert set(body) >= {
        "id",
        "user",
        "score",
        "reputation_type",
        "reputation_type_description",
        "comment",
        "reputation_context",
        "created_by",
        "reputed_at",
    }
    assert isinstance(body["id"], int)
    assert body["user"] == {
        "id": mario.id,
        "username": "mario.rossi",
        "real_name": "Mario Rossi",
        "email": "",
        "description": "",
        "avatar": "https://example.com/avatar.jpg",
        "reputation": 20,
    }
    assert body["user"]["reputation"] - first.json["user"]["reputation"] == 10
    assert body["score"] == 10
    assert body["reputation_type"] == 10
    assert body["reputation_type_description"] == "manual"
    assert body["comment"] == "Winner of the APIS contest"
    assert body["reputation_context"] == "contest|first_place|apis"
    assert body["created_by"] == {
        "id": moderator.user_id,
        "username": moderator.username,
        "avatar": "https://example.com/avatar.jpg",
    }
    assert body["reputed_at"].endswith("Z")
    assert second.headers["Location"].startswith("/api/v2/score/requests/")
    with sessions() as session:
        entries = ledger_of(session, mario.id)
        assert [e.amount for e in entries] == [10, 10]
        assert_ledger_consistent(session, entries[0].account_id)


def test_seed_001_body_as_json_with_integers_as_strings(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None
) -> None:
    user = factory.user()
    body = {"user": str(user.id), "score": "20", "comment": "Comment"}
    response = client.post("/api/v2/score/", json=body, headers=moderator.headers)
    assert response.status_code == 201, response.json
    assert response.json["score"] == 20
    assert response.json["user"]["id"] == user.id
    assert response.json["user"]["reputation"] == 20
    assert response.json["comment"] == "Comment"


def test_seed_001_body_form_encoded(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None
) -> None:
    user = factory.user()
    body = {"user": str(user.id), "score": "20", "comment": "Comment"}
    response = client.post("/api/v2/score/", data=body, headers=moderator.headers)
    assert response.status_code == 201, response.json
    assert response.json["score"] == 20
    assert response.json["user"]["reputation"] == 20


def test_negative_score_lowers_reputation_below_zero(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None
) -> None:
    user = factory.user()
    body = {"user_id": user.id, "score": -7, "comment": "spam"}
    response = client.post("/api/v2/score/", json=body, headers=moderator.headers)
    assert response.status_code == 201
    assert response.json["user"]["reputation"] == -7


def test_frozen_account_is_a_409_with_the_reason(
    client: FlaskClient,
    factory: Factory,
    moderator: Caller,
    worker: None,
    sessions: sessionmaker[Session],
) -> None:
    user = factory.user()
    body = {"user_id": user.id, "score": 5, "comment": "first"}
    assert client.post("/api/v2/score/", json=body, headers=moderator.headers).status_code == 201
    with sessions.begin() as session:
        session.execute(update(Account).where(Account.user_id == user.id).values(status="frozen"))

    body["comment"] = "second"
    response = client.post("/api/v2/score/", json=body, headers=moderator.headers)

    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == "account_frozen"
    status = client.get(response.headers["Location"], headers=moderator.headers).json
    assert status["status"] == "rejected"
    assert status["error"] == {"code": "account_frozen", "message": "the account is frozen"}
    with sessions() as session:
        assert [e.amount for e in ledger_of(session, user.id)] == [5]
