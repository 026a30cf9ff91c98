"""The asynchronous answer: 202, Location, and the status routes until `completed`."""

from __future__ import annotations

import time

from flask.testing import FlaskClient

from tests.factories import Caller, Factory


def test_respond_async_answers_202_and_the_status_reaches_completed(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None
) -> None:
    user = factory.user()
    response = client.post(
        "/api/v2/score/",
        json={"user_id": user.id, "score": 4, "comment": "later"},
        headers=moderator.headers | {"Prefer": "respond-async", "Idempotency-Key": "async-1"},
    )
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "respond-async"
    status = response.json
    assert set(status) == {
        "id",
        "idempotency_key",
        "status",
        "attempts",
        "last_error",
        "error",
        "created_at",
        "started_at",
        "completed_at",
        "batch_id",
        "cut",
        "score",
    }
    assert status["idempotency_key"] == "async-1"
    location = response.headers["Location"]
    assert location.endswith(f"/api/v2/score/requests/{status['id']}")

    deadline = time.monotonic() + 10
    while status["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
        status = client.get(location, headers=moderator.headers).json
    assert status["status"] == "completed"
    assert status["error"] is None
    assert status["attempts"] == 1
    assert status["completed_at"].endswith("Z")
    assert status["score"]["score"] == 4
    assert status["score"]["user"]["reputation"] == 4

    by_key = client.get("/api/v2/score/requests?idempotency_key=async-1", headers=moderator.headers)
    assert by_key.status_code == 200
    assert by_key.json == status


def test_wait_that_runs_out_answers_202(
    client: FlaskClient, factory: Factory, moderator: Caller
) -> None:
    # No worker runs in this test, so the request stays queued past the wait.
    user = factory.user()
    started = time.monotonic()
    response = client.post(
        "/api/v2/score/",
        json={"user_id": user.id, "score": 4, "comment": "nobody home"},
        headers=moderator.headers | {"Prefer": "wait=1"},
    )
    assert response.status_code == 202
    assert time.monotonic() - started >= 1
    assert response.json["status"] == "queued"
    assert response.json["score"] is None
    assert "Location" in response.headers


def test_status_of_another_tenant_is_404(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    response = client.post(
        "/api/v2/score/",
        json={"user_id": user.id, "score": 1, "comment": "mine"},
        headers=moderator.headers | {"Prefer": "respond-async"},
    )
    stranger = Factory(sessions).caller()
    assert client.get(response.headers["Location"], headers=stranger.headers).status_code == 404
    assert (
        client.get("/api/v2/score/requests/987654321", headers=moderator.headers).status_code == 404
    )
    missing = client.get("/api/v2/score/requests?idempotency_key=none", headers=moderator.headers)
    assert missing.status_code == 404
    no_key = client.get("/api/v2/score/requests", headers=moderator.headers)
    assert no_key.status_code == 400


def test_status_lookup_with_an_unstorable_key_is_400(client: FlaskClient, moderator: Caller):
    response = client.get("/api/v2/score/requests?idempotency_key=a%00b", headers=moderator.headers)
    assert response.status_code == 400
    assert response.json["errors"][0]["field"] == "idempotency_key"
