"""One idempotency key on the community route and on the points route.

Keys are per tenant, whatever the route: both routes record through one accept function
(shared.intake.adjustments.submit) into one table with one unique (tenant, key). The two routes'
adjustments can never be equal (the points route has no context and no comment, the
community route needs one of them, and their points types differ by default), so a key
used on one route is a 422 key reuse on the other, in that route's own error format,
and nothing new is recorded.
"""

from __future__ import annotations

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.factories import Caller, Factory, count_rows


def score(client: FlaskClient, caller: Caller, user_id: int, key: str) -> TestResponse:
    return client.post(
        "/api/v2/score/",
        json={"user_id": user_id, "score": 3, "comment": "c"},
        headers=caller.headers | {"Idempotency-Key": key, "Prefer": "respond-async"},
    )


def adjust(client: FlaskClient, caller: Caller, user_id: int, key: str) -> TestResponse:
    return client.post(
        f"/admin/points/{user_id}/adjust",
        json={"amount": 3, "points_type": "reputation"},
        headers=caller.headers | {"Idempotency-Key": key, "Prefer": "respond-async"},
    )


def test_a_key_used_on_the_score_route_is_a_422_on_the_points_route(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    assert score(client, moderator, user.id, "both-routes-1").status_code == 202
    reused = adjust(client, moderator, user.id, "both-routes-1")
    assert reused.status_code == 422 and reused.mimetype == "application/json"
    assert reused.json["code"] == 422
    assert [(e["field"], e["code"]) for e in reused.json["errors"]] == [
        ("Idempotency-Key", "reused")
    ]
    # The first route still replays its own request.
    replay = score(client, moderator, user.id, "both-routes-1")
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (1, 0)


def test_a_key_used_on_the_points_route_is_a_422_on_the_score_route(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    assert adjust(client, moderator, user.id, "both-routes-2").status_code == 202
    reused = score(client, moderator, user.id, "both-routes-2")
    assert reused.status_code == 422 and reused.mimetype == "application/problem+json"
    assert [(e["field"], e["code"]) for e in reused.json["errors"]] == [
        ("Idempotency-Key", "reused")
    ]
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (1, 0)
