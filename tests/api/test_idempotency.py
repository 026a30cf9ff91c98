"""Idempotency-Key on POST /api/v2/score/: replays, conflicts and concurrent duplicates."""

from __future__ import annotations

import threading

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Role
from tests.factories import Caller, Factory, count_rows, ledger_of


def _headers(caller: Caller, key: str, **extra: str) -> dict[str, str]:
    return caller.headers | {"Idempotency-Key": key} | extra


def test_same_key_and_body_replays_the_original(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    user = factory.user()
    body = {"user_id": user.id, "score": 3, "comment": "once"}
    first = client.post("/api/v2/score/", json=body, headers=_headers(moderator, "k-1"))
    again = client.post("/api/v2/score/", json=body, headers=_headers(moderator, "k-1"))

    assert first.status_code == again.status_code == 201
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    with sessions() as session:
        assert count_rows(session, moderator.tenant_id) == (1, 1)
        assert [e.amount for e in ledger_of(session, user.id)] == [3]


def test_a_replay_by_another_caller_reports_the_stored_creator(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    """Issue 20: the replay named its own caller as created_by; the entry says otherwise."""
    user, other = factory.user(), factory.caller(Role.MODERATOR)
    body = {"user_id": user.id, "score": 3, "comment": "once"}
    first = client.post("/api/v2/score/", json=body, headers=_headers(moderator, "k-by"))
    again = client.post("/api/v2/score/", json=body, headers=_headers(other, "k-by"))
    assert first.status_code == again.status_code == 201
    assert again.json["created_by"]["id"] == first.json["created_by"]["id"] == moderator.user_id
    assert again.json == first.json
    with sessions() as session:
        assert count_rows(session, moderator.tenant_id) == (1, 1)


def test_same_content_as_form_is_the_same_body(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    user = factory.user()
    json_body = {"user_id": user.id, "score": 3, "comment": "once"}
    form_body = {"user": str(user.id), "score": "3", "comment": "once"}
    first = client.post("/api/v2/score/", json=json_body, headers=_headers(moderator, "k-2"))
    again = client.post("/api/v2/score/", data=form_body, headers=_headers(moderator, "k-2"))
    assert first.status_code == again.status_code == 201
    assert again.json["id"] == first.json["id"]
    with sessions() as session:
        assert count_rows(session, moderator.tenant_id) == (1, 1)


def test_same_key_with_a_different_body_is_422(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    user = factory.user()
    body = {"user_id": user.id, "score": 3, "comment": "once"}
    assert (
        client.post("/api/v2/score/", json=body, headers=_headers(moderator, "k-3")).status_code
        == 201
    )
    response = client.post(
        "/api/v2/score/", json=body | {"score": 4}, headers=_headers(moderator, "k-3")
    )
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.json["errors"][0]["field"] == "Idempotency-Key"
    with sessions() as session:
        assert count_rows(session, moderator.tenant_id) == (1, 1)


def test_keys_are_scoped_to_the_tenant(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    other_factory = Factory(sessions)
    other = other_factory.caller()
    mine, theirs = factory.user(), other_factory.user()
    a = client.post(
        "/api/v2/score/",
        json={"user_id": mine.id, "score": 1, "comment": "a"},
        headers=_headers(moderator, "shared-key"),
    )
    b = client.post(
        "/api/v2/score/",
        json={"user_id": theirs.id, "score": 2, "comment": "b"},
        headers=_headers(other, "shared-key"),
    )
    assert a.status_code == b.status_code == 201
    assert a.json["id"] != b.json["id"]


def test_concurrent_requests_with_one_key_make_one_request(
    flask_app: Flask,
    factory: Factory,
    moderator: Caller,
    worker: None,
    sessions: sessionmaker[Session],
) -> None:
    user = factory.user()
    body = {"user_id": user.id, "score": 5, "comment": "race"}
    barrier = threading.Barrier(8)
    answers: list[tuple[int, int]] = []

    def post() -> None:
        client = flask_app.test_client()
        barrier.wait()
        response = client.post("/api/v2/score/", json=body, headers=_headers(moderator, "race-key"))
        answers.append((response.status_code, response.json["id"]))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(answers) == 8
    assert {status for status, _ in answers} == {201}
    assert len({score_id for _, score_id in answers}) == 1
    with sessions() as session:
        assert count_rows(session, moderator.tenant_id) == (1, 1)
        assert [e.amount for e in ledger_of(session, user.id)] == [5]


def test_replayed_rejection_says_it_is_a_replay(
    client: FlaskClient, factory: Factory, worker: None, sessions
) -> None:
    admin = factory.caller(Role.ADMIN)
    user = factory.user()
    body = {"amount": -5, "reason": "more than there is"}
    url = f"/admin/points/{user.id}/adjust"
    first = client.post(url, json=body, headers=_headers(admin, "spend-1"))
    again = client.post(url, json=body, headers=_headers(admin, "spend-1"))

    assert first.status_code == again.status_code == 409
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    with sessions() as session:
        assert count_rows(session, admin.tenant_id) == (1, 0)


def test_a_structured_field_key_is_its_content_and_a_keyless_request_gets_one(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    """Issue 24, the Idempotency-Key draft: the header is a Structured Field string (the
    quotes are not part of the key; a bare key, as most clients send, is taken as it is),
    and a request without one gets a key of tally's, returned for its retries."""
    user = factory.user()
    body = {"user_id": user.id, "score": 2, "comment": "quoted"}
    quoted = client.post("/api/v2/score/", json=body, headers=_headers(moderator, '"sf-7"'))
    bare = client.post("/api/v2/score/", json=body, headers=_headers(moderator, "sf-7"))
    assert quoted.status_code == bare.status_code == 201
    assert bare.headers["Idempotent-Replayed"] == "true"
    assert quoted.headers["Idempotency-Key"] == bare.headers["Idempotency-Key"] == '"sf-7"'

    keyless = {"user_id": user.id, "score": 5, "comment": "no key"}
    first = client.post("/api/v2/score/", json=keyless, headers=moderator.headers)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    given = first.headers["Idempotency-Key"]
    assert given.startswith('"tally-')
    retry = client.post("/api/v2/score/", json=keyless, headers=_headers(moderator, given))
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.headers["Location"] == first.headers["Location"]
    # Answered before the worker applies it (202), its status names the key it was given.
    queued = client.post(
        "/api/v2/score/",
        json={"user_id": user.id, "score": 1, "comment": "async"},
        headers={**moderator.headers, "Prefer": "respond-async"},
    )
    assert queued.status_code == 202
    assert f'"{queued.get_json()["idempotency_key"]}"' == queued.headers["Idempotency-Key"]
    with sessions() as session:
        assert [e.amount for e in ledger_of(session, user.id)][:2] == [2, 5]
