"""Another tenant's objects answer exactly like missing ones, on every route of the URL map.

Each case asks a route about an object of tenant B (with tenant A's admin token)
and about an object that exists nowhere, and the two answers must be the same,
apart from the id that each names. A route without a case fails the test that
walks the URL map, so a new route cannot forget its tenant filter unnoticed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from shared.models import AdjustmentRequest, Batch, Role, User
from tests.factories import Caller, Factory, count_rows

# Routes that hold no tenant's data.
PUBLIC = {
    "health.healthz",
    "health.readyz",
    "metrics.metrics",
    "openapi.openapi_json",
    "openapi.docs",
    "openapi.docs_init",
    "openapi.docs_assets",
}
MISSING_ID = 2**62
MISSING_NAME = "nobody-anywhere"
# Answer fields that name the object asked about or the moment of the answer.
VOLATILE = ("detail", "message", "timestamp")


@dataclass(frozen=True)
class World:
    """Tenant A's admin (who asks) and tenant B's objects (which A must not see)."""

    client: FlaskClient
    mine: Caller
    theirs: Caller
    their_user: User
    their_request_id: int
    their_request_key: str
    their_batch_id: str
    sessions: sessionmaker[Session]


def _normalised(response: TestResponse) -> tuple[int, Any]:
    body = response.get_json(silent=True)
    if isinstance(body, dict):
        body = {key: value for key, value in body.items() if key not in VOLATILE}
        if isinstance(body.get("data"), dict):
            body["data"] = {k: v for k, v in body["data"].items() if k != "timestamp"}
    return response.status_code, body


def _alike(theirs: TestResponse, missing: TestResponse) -> None:
    assert _normalised(theirs) == _normalised(missing)
    assert theirs.status_code != 500


def _get(world: World, url: str, **query: Any) -> TestResponse:
    return world.client.get(url, query_string=query, headers=world.mine.headers)


def _post(world: World, url: str, body: Any, key: str | None = None) -> TestResponse:
    headers = world.mine.headers | ({"Idempotency-Key": key} if key else {})
    return world.client.post(url, json=body, headers=headers)


def _written(world: World) -> tuple[int, ...]:
    with world.sessions() as session:
        tenants = (world.mine.tenant_id, world.theirs.tenant_id)
        batches = session.scalar(select(func.count()).where(Batch.tenant_id.in_(tenants)))
        return (*count_rows(session, tenants[0]), *count_rows(session, tenants[1]), batches or 0)


# --- one case per (endpoint, method) -----------------------------------------------------


def score_create(world: World) -> None:
    user = world.their_user
    for field, theirs, missing in (
        ("user_id", user.id, MISSING_ID),
        ("username", user.username, MISSING_NAME),
        ("user", str(user.id), str(MISSING_ID)),
    ):
        before = _written(world)
        body = {"score": 1, "comment": "probe"}
        _alike(
            _post(world, "/api/v2/score/", body | {field: theirs}, f"probe-{field}"),
            _post(world, "/api/v2/score/", body | {field: missing}, f"probe-{field}-x"),
        )
        assert _written(world) == before


def score_list(world: World) -> None:
    _alike(
        _get(world, "/api/v2/score/", user_id=world.their_user.id),
        _get(world, "/api/v2/score/", user_id=MISSING_ID),
    )
    _alike(
        _get(world, "/api/v2/score/", username=world.their_user.username),
        _get(world, "/api/v2/score/", username=MISSING_NAME),
    )
    # Unfiltered, tenant A sees none of B's entries (A has none of its own).
    assert _get(world, "/api/v2/score/").json["count"] == 0


def leaderboard(world: World) -> None:
    _alike(
        _get(world, "/api/v2/score/leaderboard/", user_id=world.their_user.id),
        _get(world, "/api/v2/score/leaderboard/", user_id=MISSING_ID),
    )
    assert _get(world, "/api/v2/score/leaderboard/").json["count"] == 0


def reputation_types(world: World) -> None:
    # The same fixed list for every tenant: nothing of B's to leak.
    assert _get(world, "/api/v2/score/reputation_types/").json == (
        world.client.get("/api/v2/score/reputation_types/", headers=world.theirs.headers).json
    )


def request_status(world: World) -> None:
    _alike(
        _get(world, f"/api/v2/score/requests/{world.their_request_id}"),
        _get(world, f"/api/v2/score/requests/{MISSING_ID}"),
    )


def request_by_key(world: World) -> None:
    _alike(
        _get(world, "/api/v2/score/requests", idempotency_key=world.their_request_key),
        _get(world, "/api/v2/score/requests", idempotency_key="no-such-key"),
    )


def batch(world: World) -> None:
    _alike(
        _get(world, f"/api/v2/score/batches/{world.their_batch_id}"),
        _get(world, "/api/v2/score/batches/01ZZZZZZZZZZZZZZZZZZZZZZZZ"),
    )


def batch_items(world: World) -> None:
    _alike(
        _get(world, f"/api/v2/score/batches/{world.their_batch_id}/items"),
        _get(world, "/api/v2/score/batches/01ZZZZZZZZZZZZZZZZZZZZZZZZ/items"),
    )


def bulk(world: World) -> None:
    user = world.their_user
    before = _written(world)
    for theirs, missing in (
        ({"user_id": user.id}, {"user_id": MISSING_ID}),
        ({"username": user.username}, {"username": MISSING_NAME}),
    ):
        item = {"score": 1, "comment": "probe"}
        _alike(
            _post(world, "/api/v2/score/bulk", {"items": [item | theirs]}, "bulk-theirs"),
            _post(world, "/api/v2/score/bulk", {"items": [item | missing]}, "bulk-missing"),
        )
    assert _written(world) == before


def import_csv(world: World) -> None:
    user = world.their_user
    before = _written(world)
    for dry_run in (True, False):
        for theirs, missing in (
            (f"{user.username},,1,contest|a,", f"{MISSING_NAME},,1,contest|a,"),
            (f",{user.id},1,contest|a,", f",{MISSING_ID},1,contest|a,"),
        ):
            _alike(
                _post(world, "/api/v2/score/import/", {"csv_string": theirs, "dry_run": dry_run}),
                _post(world, "/api/v2/score/import/", {"csv_string": missing, "dry_run": dry_run}),
            )
    assert _written(world) == before


def points_adjust(world: World) -> None:
    before = _written(world)
    for theirs in (world.their_user.external_id, str(world.their_user.id)):
        _alike(
            _post(world, f"/admin/points/{theirs}/adjust", {"amount": 1}, "p-theirs"),
            _post(world, f"/admin/points/{MISSING_NAME}/adjust", {"amount": 1}, "p-missing"),
        )
    assert _written(world) == before


def points_accounts(world: World) -> None:
    for theirs in (world.their_user.external_id, str(world.their_user.id)):
        _alike(_get(world, f"/admin/points/{theirs}"), _get(world, f"/admin/points/{MISSING_NAME}"))


def points_transactions(world: World) -> None:
    for theirs in (world.their_user.external_id, str(world.their_user.id)):
        _alike(
            _get(world, f"/admin/points/{theirs}/transactions"),
            _get(world, f"/admin/points/{MISSING_NAME}/transactions"),
        )


def users_read(world: World) -> None:
    _alike(
        _get(world, f"/api/v2/users/{world.their_user.id}"),
        _get(world, f"/api/v2/users/{MISSING_ID}"),
    )


def users_create(world: World) -> None:
    """B's username and external id are free in A, exactly as names nobody has."""
    taken = {"username": world.their_user.username, "external_id": world.their_user.external_id}
    free = {"username": "free-name", "external_id": "free-ext"}
    created = [_post(world, "/api/v2/users/", body) for body in (taken, free)]
    assert [response.status_code for response in created] == [201, 201]
    assert created[0].json["reputation"] == created[1].json["reputation"] == 0


CASES: dict[str, Callable[[World], None]] = {
    "score.create_score": score_create,
    "score_reads.list_score": score_list,
    "score_reads.score_leaderboard": leaderboard,
    "score_reads.reputation_types": reputation_types,
    "score.request_status": request_status,
    "score.request_by_key": request_by_key,
    "bulk.batch": batch,
    "bulk.batch_items": batch_items,
    "bulk.bulk": bulk,
    "bulk.import_csv": import_csv,
    "points.adjust": points_adjust,
    "points.accounts": points_accounts,
    "points.transactions": points_transactions,
    "users.read": users_read,
    "users.create": users_create,
}


def test_every_route_of_the_url_map_has_an_isolation_case(flask_app: Flask) -> None:
    endpoints = {rule.endpoint for rule in flask_app.url_map.iter_rules()}
    assert endpoints - PUBLIC == set(CASES), "give each new route an isolation case"


@pytest.fixture(scope="module")
def world(flask_app: Flask, celery_app: Any, request: pytest.FixtureRequest) -> World:
    sessions = celery_app.resources.sessions
    mine = Factory(sessions).caller(Role.ADMIN)
    their_factory = Factory(sessions)
    theirs = their_factory.caller(Role.ADMIN)
    their_user = their_factory.user(external_id="ext-" + their_factory.tenant_id)
    client = flask_app.test_client()
    # Tenant B gets an applied request (a ledger entry) and a batch.
    posted = client.post(
        "/api/v2/score/",
        json={"user_id": their_user.id, "score": 5, "comment": "theirs"},
        headers=theirs.headers | {"Idempotency-Key": "their-key", "Prefer": "respond-async"},
    )
    assert posted.status_code == 202
    batch_answer = client.post(
        "/api/v2/score/bulk",
        data=json.dumps({"items": [{"user_id": their_user.id, "score": 1, "comment": "b"}]}),
        content_type="application/json",
        headers=theirs.headers | {"Idempotency-Key": "their-batch"},
    )
    assert batch_answer.status_code == 202
    with sessions() as session:
        request_id = session.scalars(
            select(AdjustmentRequest.id).where(
                AdjustmentRequest.tenant_id == theirs.tenant_id,
                AdjustmentRequest.idempotency_key == "their-key",
            )
        ).one()
    return World(
        client, mine, theirs, their_user, request_id, "their-key", batch_answer.json["id"],
        sessions,
    )  # fmt: skip


@pytest.mark.parametrize("endpoint", sorted(CASES))
def test_another_tenants_object_answers_like_a_missing_one(world: World, endpoint: str) -> None:
    CASES[endpoint](world)
