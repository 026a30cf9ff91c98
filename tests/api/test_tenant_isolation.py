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

from shared.events.log import number_events
from shared.events.webhooks import EndpointInput, create_endpoint
from shared.models import (
    Account,
    AdjustmentRequest,
    Batch,
    Hold,
    LedgerEntry,
    Role,
    User,
    WebhookDelivery,
    WebhookEndpoint,
)
from tests.factories import Caller, Factory, apply_now, count_rows

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
MISSING_ULID = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"
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
    # B's applied score (a ledger entry: its id and its ULID) and B's open hold.
    their_entry_id: int
    their_entry_ulid: str
    their_hold_id: int
    # A user of tenant A's own, with no account: A's path with B's hold.
    my_user: User
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


def _their_state(world: World) -> tuple[Any, ...]:
    """B's accounts (status, version, balances) and holds, which no probe of A may change."""
    with world.sessions() as session:
        accounts = session.execute(
            select(Account.points_type, Account.status, Account.version, Account.balance,
                   Account.frozen_balance)
            .where(Account.tenant_id == world.theirs.tenant_id)
            .order_by(Account.points_type)
        ).all()  # fmt: skip
        holds = session.execute(
            select(Hold.request_id, Hold.status, Hold.captured).where(
                Hold.tenant_id == world.theirs.tenant_id
            )
        ).all()
        return tuple(accounts), tuple(holds)


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


def own_rank(world: World) -> None:
    for period in ("all", "week"):
        _alike(
            _get(world, "/api/v2/score/leaderboard/me", user_id=world.their_user.id,
                 period=period),
            _get(world, "/api/v2/score/leaderboard/me", user_id=MISSING_ID, period=period),
        )  # fmt: skip
    # A's admin has no entry, and B's entries make no board of A's.
    mine = _get(world, "/api/v2/score/leaderboard/me", period="year").json
    assert (mine["rank"], mine["count"]) == (None, 0)


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
        _alike(
            _get(world, f"/admin/points/{theirs}", as_of="2030-01-01T00:00:00Z"),
            _get(world, f"/admin/points/{MISSING_NAME}", as_of="2030-01-01T00:00:00Z"),
        )


def points_statement(world: World) -> None:
    for theirs in (world.their_user.external_id, str(world.their_user.id)):
        _alike(
            _get(world, f"/admin/points/{theirs}/statement"),
            _get(world, f"/admin/points/{MISSING_NAME}/statement"),
        )


def export(world: World) -> None:
    """A's export holds none of B's entries or requests (A has none)."""
    for kind in ("entries", "requests"):
        response = _get(world, "/api/v2/export", kind=kind, format="ndjson")
        assert response.status_code == 200 and response.get_data() == b""


def points_transactions(world: World) -> None:
    for theirs in (world.their_user.external_id, str(world.their_user.id)):
        _alike(
            _get(world, f"/admin/points/{theirs}/transactions"),
            _get(world, f"/admin/points/{MISSING_NAME}/transactions"),
        )


def holds_place(world: World) -> None:
    before = _written(world), _their_state(world)
    for theirs in (world.their_user.external_id, str(world.their_user.id)):
        _alike(
            _post(world, f"/admin/points/{theirs}/holds", {"amount": 1}, "h-theirs"),
            _post(world, f"/admin/points/{MISSING_NAME}/holds", {"amount": 1}, "h-missing"),
        )
    assert (_written(world), _their_state(world)) == before


def _hold_urls(world: World, suffix: str) -> list[tuple[str, str]]:
    """(B's hold, a missing hold) by B's user and by a user of A's own."""
    hold, mine = world.their_hold_id, world.my_user.id
    pairs = [
        (f"/admin/points/{theirs}/holds/{hold}{suffix}",
         f"/admin/points/{MISSING_NAME}/holds/{MISSING_ID}{suffix}")
        for theirs in (world.their_user.external_id, str(world.their_user.id))
    ]  # fmt: skip
    pairs.append(
        (f"/admin/points/{mine}/holds/{hold}{suffix}",
         f"/admin/points/{mine}/holds/{MISSING_ID}{suffix}")
    )  # fmt: skip
    return pairs


def holds_capture(world: World) -> None:
    before = _written(world), _their_state(world)
    for theirs, missing in _hold_urls(world, "/capture"):
        for body in ({}, {"amount": 1}):
            _alike(_post(world, theirs, body, "c-theirs"), _post(world, missing, body, "c-missing"))
    assert (_written(world), _their_state(world)) == before


def holds_release(world: World) -> None:
    before = _written(world), _their_state(world)
    for theirs, missing in _hold_urls(world, "/release"):
        _alike(_post(world, theirs, {}, "r-theirs"), _post(world, missing, {}, "r-missing"))
    assert (_written(world), _their_state(world)) == before


def holds_read(world: World) -> None:
    for theirs, missing in _hold_urls(world, ""):
        _alike(_get(world, theirs), _get(world, missing))


def points_reverse(world: World) -> None:
    before = _written(world), _their_state(world)
    for body in ({}, {"reason": "probe", "allow_negative_balance": True}):
        _alike(
            _post(world, f"/admin/points/transactions/{world.their_entry_ulid}/reverse", body,
                  "pr-theirs"),
            _post(world, f"/admin/points/transactions/{MISSING_ULID}/reverse", body, "pr-missing"),
        )  # fmt: skip
    assert (_written(world), _their_state(world)) == before


def score_reverse(world: World) -> None:
    before = _written(world), _their_state(world)
    for body in ({}, {"comment": "probe"}):
        _alike(
            _post(world, f"/api/v2/score/{world.their_entry_id}/reverse", body, "sr-theirs"),
            _post(world, f"/api/v2/score/{MISSING_ID}/reverse", body, "sr-missing"),
        )
    assert (_written(world), _their_state(world)) == before


def _set_status(world: World, action: str, points_type: str) -> None:
    """A's admin freezes or unfreezes B's account: not found, and B's account unchanged."""
    before = _written(world), _their_state(world)
    body = {"points_type": points_type}
    for theirs in (world.their_user.external_id, str(world.their_user.id)):
        _alike(
            _post(world, f"/admin/points/{theirs}/{action}", body),
            _post(world, f"/admin/points/{MISSING_NAME}/{action}", body),
        )
    assert (_written(world), _their_state(world)) == before


def points_freeze(world: World) -> None:
    _set_status(world, "freeze", "points")  # B's points account is active


def points_unfreeze(world: World) -> None:
    _set_status(world, "unfreeze", "reputation")  # B's reputation account is frozen


def users_read(world: World) -> None:
    _alike(
        _get(world, f"/api/v2/users/{world.their_user.id}"),
        _get(world, f"/api/v2/users/{MISSING_ID}"),
    )
    _alike(
        _get(world, f"/api/v2/users/{world.their_user.id}", as_of="2030-01-01T00:00:00Z"),
        _get(world, f"/api/v2/users/{MISSING_ID}", as_of="2030-01-01T00:00:00Z"),
    )


def users_list(world: World) -> None:
    # A user of B's own for this case: users_create gives A namesakes of B's first.
    with world.sessions.begin() as session:
        theirs = User(tenant_id=world.theirs.tenant_id, username="listed-b", external_id="ext-b")
        session.add(theirs)
    for name, value in (("username", "listed-b"), ("external_id", "ext-b")):
        _alike(
            _get(world, "/api/v2/users/", **{name: value}),
            _get(world, "/api/v2/users/", **{name: MISSING_NAME}),
        )
    # Unfiltered, tenant A lists its own users only.
    listed = {user["id"] for user in _get(world, "/api/v2/users/", limit=1000).json["results"]}
    assert world.their_user.id not in listed and world.mine.user_id in listed


def users_statement(world: World) -> None:
    _alike(
        _get(world, f"/api/v2/users/{world.their_user.id}/statement"),
        _get(world, f"/api/v2/users/{MISSING_ID}/statement"),
    )


def users_create(world: World) -> None:
    """B's username and external id are free in A, exactly as names nobody has."""
    taken = {"username": world.their_user.username, "external_id": world.their_user.external_id}
    free = {"username": "free-name", "external_id": "free-ext"}
    created = [_post(world, "/api/v2/users/", body) for body in (taken, free)]
    assert [response.status_code for response in created] == [201, 201]
    assert created[0].json["reputation"] == created[1].json["reputation"] == 0


def events_feed(world: World) -> None:
    """B's account shows nothing in A's feed, exactly as an account nobody has; A's whole
    feed holds none of B's events (which B's own feed has)."""
    with world.sessions.begin() as session:
        number_events(session)
    with world.sessions() as session:
        their_account = session.scalars(
            select(Account.id).where(Account.tenant_id == world.theirs.tenant_id)
        ).first()
    theirs = _get(world, "/api/v2/events", account=their_account)
    missing = _get(world, "/api/v2/events", account=MISSING_ULID)
    for answer in (theirs, missing):
        assert answer.status_code == 200
        assert answer.json["events"] == [] and answer.json["next_cursor"] == 0
    mine = _get(world, "/api/v2/events", limit=1000).json["events"]
    assert {event["tenant_id"] for event in mine} <= {world.mine.tenant_id}
    own = world.client.get("/api/v2/events", headers=world.theirs.headers).json["events"]
    assert own and {event["tenant_id"] for event in own} == {world.theirs.tenant_id}


def _their_endpoint(world: World) -> WebhookEndpoint:
    """A webhook endpoint of tenant B's (made directly: the suite's API refuses loopback)."""
    with world.sessions.begin() as session:
        theirs = world.theirs
        data = EndpointInput(url="http://127.0.0.1:9/theirs", types=["entry.created"])
        return create_endpoint(session, theirs.tenant_id, theirs.user_id, data, True)


def _endpoint_unchanged(world: World, before: WebhookEndpoint) -> None:
    with world.sessions() as session:
        after = session.get_one(WebhookEndpoint, before.id)
        assert (after.url, after.types, after.secret, after.status, after.updated_at) == (
            before.url, before.types, before.secret, before.status, before.updated_at,
        )  # fmt: skip
        assert not session.scalar(
            select(func.count()).where(WebhookDelivery.endpoint_id == before.id)
        )


def webhooks_create_and_list(world: World) -> None:
    """A's list holds none of B's endpoints (which B's has); B's URL is no more taken in
    A than any other."""
    theirs = _their_endpoint(world)
    assert theirs.id not in {e["id"] for e in _get(world, "/api/v2/webhooks/").json["results"]}
    own = world.client.get("/api/v2/webhooks/", headers=world.theirs.headers).json["results"]
    assert theirs.id in {e["id"] for e in own}
    _alike(
        _post(world, "/api/v2/webhooks/", {"url": theirs.url}),
        _post(world, "/api/v2/webhooks/", {"url": "http://127.0.0.1:9/nobody"}),
    )


def _webhook_probe(world: World, method: str, suffix: str, body: Any = None) -> None:
    theirs = _their_endpoint(world)
    answers = [
        world.client.open(
            f"/api/v2/webhooks/{endpoint_id}{suffix}",
            method=method,
            json=body,
            headers=world.mine.headers,
        )
        for endpoint_id in (theirs.id, MISSING_ULID)
    ]
    _alike(*answers)
    assert answers[0].status_code == 404
    _endpoint_unchanged(world, theirs)


def webhooks_read(world: World) -> None:
    _webhook_probe(world, "GET", "")


def webhooks_change(world: World) -> None:
    _webhook_probe(world, "PATCH", "", {"url": "http://127.0.0.1:9/mine", "status": "disabled"})


def webhooks_rotate(world: World) -> None:
    _webhook_probe(world, "POST", "/rotate-secret", {})


def webhooks_redeliver(world: World) -> None:
    _webhook_probe(world, "POST", "/redeliver", {"after": 0})


def webhooks_deliveries(world: World) -> None:
    _webhook_probe(world, "GET", "/deliveries")


CASES: dict[str, Callable[[World], None]] = {
    "score.create_score": score_create,
    "score_reads.list_score": score_list,
    "score_reads.score_leaderboard": leaderboard,
    "score_reads.own_rank_on_board": own_rank,
    "points.account_statement": points_statement,
    "users.reputation_statement": users_statement,
    "history.export_rows": export,
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
    "points.reverse": points_reverse,
    "points.freeze": points_freeze,
    "points.unfreeze": points_unfreeze,
    "holds.place": holds_place,
    "holds.capture": holds_capture,
    "holds.release": holds_release,
    "holds.read": holds_read,
    "score.reverse": score_reverse,
    "users.read": users_read,
    "users.list_all": users_list,
    "users.create": users_create,
    "events.feed": events_feed,
    "webhooks.create": webhooks_create_and_list,
    "webhooks.list_all": webhooks_create_and_list,
    "webhooks.read": webhooks_read,
    "webhooks.change": webhooks_change,
    "webhooks.rotate": webhooks_rotate,
    "webhooks.redeliver_events": webhooks_redeliver,
    "webhooks.deliveries": webhooks_deliveries,
}


def test_every_route_of_the_url_map_has_an_isolation_case(flask_app: Flask) -> None:
    endpoints = {rule.endpoint for rule in flask_app.url_map.iter_rules()}
    assert endpoints - PUBLIC == set(CASES), "give each new route an isolation case"


@pytest.fixture(scope="module")
def world(flask_app: Flask, celery_app: Any, request: pytest.FixtureRequest) -> World:
    sessions = celery_app.resources.sessions
    my_factory = Factory(sessions)
    mine = my_factory.caller(Role.ADMIN)
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
    # And points with an open hold; then B's accounts are applied, so the score is an
    # entry, and B's reputation account is frozen (for the unfreeze case).
    points = theirs.headers | {"Prefer": "respond-async"}
    url = f"/admin/points/{their_user.id}"
    assert client.post(f"{url}/adjust", json={"amount": 10}, headers=points).status_code == 202
    hold = client.post(f"{url}/holds", json={"amount": 3}, headers=points)
    assert hold.status_code == 202
    with sessions() as session:
        accounts = session.scalars(select(Account.id).where(Account.user_id == their_user.id))
        account_ids = list(accounts)
    apply_now(celery_app, account_ids)
    with sessions() as session:
        request_id, entry_id, entry_ulid = session.execute(
            select(AdjustmentRequest.id, LedgerEntry.id, LedgerEntry.ulid)
            .join(LedgerEntry, LedgerEntry.request_id == AdjustmentRequest.id)
            .where(
                AdjustmentRequest.tenant_id == theirs.tenant_id,
                AdjustmentRequest.idempotency_key == "their-key",
            )
        ).one()
        hold_id = hold.json["data"]["hold"]["id"]
        assert session.get_one(Hold, hold_id).status == "open"
    frozen = client.post(
        f"{url}/freeze", json={"points_type": "reputation"}, headers=theirs.headers
    )
    assert frozen.status_code == 200
    return World(
        client, mine, theirs, their_user, request_id, "their-key", batch_answer.json["id"],
        entry_id, entry_ulid, hold_id, my_factory.user(), sessions,
    )  # fmt: skip


@pytest.mark.parametrize("endpoint", sorted(CASES))
def test_another_tenants_object_answers_like_a_missing_one(world: World, endpoint: str) -> None:
    CASES[endpoint](world)
