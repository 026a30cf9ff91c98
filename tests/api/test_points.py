"""Seed 002: POST /admin/points/{user_id}/adjust, the accounts and the transactions."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient

from shared.models import Role
from tests.factories import Caller, Factory, count_rows

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ACCOUNT_FIELDS = {
    "balance": int,
    "created_at": str,
    "exchange_rate": int,
    "expired_points": int,
    "frozen_balance": int,
    "id": str,
    "points_type": str,
    "status": str,
    "tenant_id": str,
    "total_earned": int,
    "total_spent": int,
    "updated_at": str,
    "user_id": str,
    "version": int,
}
TRANSACTION_FIELDS = {
    "account_id": str,
    "amount": int,
    "balance_after": int,
    "balance_before": int,
    "created_at": str,
    "description": str,
    "expires_at": str,
    "id": str,
    "idempotency_key": str,
    "reason": str,
    "related_id": str,
    "source": str,
    "status": str,
    "type": str,
    "updated_at": str,
    "user_id": str,
}


def _adjust(client: FlaskClient, caller: Caller, user_ref: str, body: dict, **headers: str):
    return client.post(
        f"/admin/points/{user_ref}/adjust", json=body, headers=caller.headers | headers
    )


def test_adjust_answers_201_with_every_seed_field(
    client: FlaskClient, factory: Factory, worker: None
) -> None:
    admin = factory.caller(Role.ADMIN)
    factory.user(external_id="usr_example_001")
    response = _adjust(
        client,
        admin,
        "usr_example_001",
        {
            "amount": 100,
            "reason": "Check-in reward",
            "points_type": "cash_equivalent",
            "idempotency_key": "ik_abc123",
            "expires_at": "2027-01-15T10:30:00Z",
            "source": "daily_checkin",
            "related_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        },
    )
    assert response.status_code == 201, response.json
    body = response.json
    assert body["code"] == 0 and isinstance(body["message"], str)
    assert TIMESTAMP.match(body["timestamp"])
    account, transaction = body["data"]["account"], body["data"]["transaction"]
    for name, kind in ACCOUNT_FIELDS.items():
        assert isinstance(account[name], kind), name
    for name, kind in TRANSACTION_FIELDS.items():
        assert isinstance(transaction[name], kind), name
    assert ULID.match(account["id"]) and ULID.match(transaction["id"])
    assert account["user_id"] == transaction["user_id"] == "usr_example_001"
    assert account["tenant_id"] == factory.tenant_id
    assert (account["points_type"], account["exchange_rate"]) == ("cash_equivalent", 100)
    assert (account["balance"], account["total_earned"], account["total_spent"]) == (100, 100, 0)
    assert account["version"] == 1 and account["status"] == "active"
    assert (transaction["balance_before"], transaction["balance_after"]) == (0, 100)
    assert transaction["status"] == "completed"
    assert transaction["account_id"] == account["id"]
    assert transaction["idempotency_key"] == "ik_abc123"
    assert transaction["expires_at"] == "2027-01-15T10:30:00Z"
    assert (transaction["source"], transaction["related_id"]) == (
        "daily_checkin",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    )
    assert transaction["reason"] == transaction["description"] == "Check-in reward"


def test_overdraft_on_cash_equivalent_is_409_and_changes_nothing(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    user = factory.user()
    body = {"amount": 10, "points_type": "cash_equivalent", "reason": "top up"}
    assert _adjust(client, moderator, str(user.id), body).status_code == 201
    refused = _adjust(client, moderator, str(user.id), body | {"amount": -20, "reason": "buy"})
    assert refused.status_code == 409
    assert refused.json["code"] == 409
    assert "below zero" in refused.json["message"]
    accounts = client.get(f"/admin/points/{user.id}", headers=moderator.headers).json["data"]
    assert [(a["points_type"], a["balance"]) for a in accounts] == [("cash_equivalent", 10)]
    page = client.get(f"/admin/points/{user.id}/transactions", headers=moderator.headers).json
    assert page["data"]["total"] == 1


def test_default_points_type_forbids_negative_balances(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None
) -> None:
    user = factory.user()
    response = _adjust(client, moderator, str(user.id), {"amount": -1})
    assert response.status_code == 409
    assert response.json["message"].startswith("the balance may not go below zero")


def test_allow_negative_balance_is_for_admins_only(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    user = factory.user()
    body = {"amount": -5, "allow_negative_balance": True}
    refused = _adjust(client, moderator, str(user.id), body)
    assert refused.status_code == 403
    assert refused.json["code"] == 403
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)
    allowed = _adjust(client, factory.caller(Role.ADMIN), str(user.id), body)
    assert allowed.status_code == 201
    assert allowed.json["data"]["account"]["balance"] == -5


def test_unknown_user_is_404_in_the_envelope(client: FlaskClient, moderator: Caller) -> None:
    response = _adjust(client, moderator, "usr_nobody", {"amount": 1})
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.json["code"] == 404 and "timestamp" in response.json


def test_validation_errors_name_the_field_and_write_nothing(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    for body, field in [
        ({"amount": 0}, "amount"),
        ({"amount": "1.5"}, "amount"),
        ({}, "amount"),
        ({"amount": 1, "points_type": "gold"}, "points_type"),
        ({"amount": 1, "expires_at": "tomorrow"}, "expires_at"),
        # Valid ISO 8601 whose UTC moment leaves datetime's range (was an OverflowError).
        ({"amount": 1, "expires_at": "9999-12-31T23:59:59-23:59"}, "expires_at"),
        ({"amount": 1, "expires_at": "0001-01-01T00:00:00+14:00"}, "expires_at"),
        ({"amount": 1, "idempotency_key": 7}, "idempotency_key"),
        ({"amount": 1, "allow_negative_balance": "yes"}, "allow_negative_balance"),
    ]:
        response = _adjust(client, moderator, str(user.id), body)
        assert response.status_code == 400, body
        assert response.json["code"] == 400
        assert [e["field"] for e in response.json["errors"]] == [field], body
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)


def test_missing_token_is_401_in_the_envelope(client: FlaskClient) -> None:
    response = client.post("/admin/points/1/adjust", json={"amount": 1})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json["code"] == 401


def test_idempotency_replay_and_conflict(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    user = factory.user()
    body = {"amount": 7, "idempotency_key": "pts-1"}
    first = _adjust(client, moderator, str(user.id), body)
    again = _adjust(client, moderator, str(user.id), body)
    assert first.status_code == again.status_code == 201
    assert again.json["data"]["transaction"]["id"] == first.json["data"]["transaction"]["id"]
    conflict = _adjust(client, moderator, str(user.id), body | {"amount": 8})
    assert conflict.status_code == 422
    header_mismatch = _adjust(client, moderator, str(user.id), body, **{"Idempotency-Key": "x"})
    assert header_mismatch.status_code == 400
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (1, 1)


def test_respond_async_is_202_with_the_request_status(
    client: FlaskClient, factory: Factory, moderator: Caller
) -> None:
    user = factory.user()
    response = _adjust(client, moderator, str(user.id), {"amount": 3}, Prefer="respond-async")
    assert response.status_code == 202
    transaction = response.json["data"]["transaction"]
    assert transaction["status"] == "queued"
    assert transaction["id"] is None and transaction["balance_after"] is None
    assert "/api/v2/score/requests/" in response.headers["Location"]


def test_transactions_page_newest_first(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None
) -> None:
    user = factory.user()
    for amount in (1, 2, 3):
        assert _adjust(client, moderator, str(user.id), {"amount": amount}).status_code == 201
    url = f"/admin/points/{user.id}/transactions?limit=2"
    page = client.get(url, headers=moderator.headers).json["data"]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    assert [t["amount"] for t in page["items"]] == [3, 2]
    rest = client.get(url + "&offset=2", headers=moderator.headers).json["data"]
    assert [t["amount"] for t in rest["items"]] == [1]
    bad = client.get(url + "&offset=-1", headers=moderator.headers)
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "offset"


# Issue 21 item 11: a time at which points expire must be one still to come, on an earn.
EXPIRING_ROUTES = ("adjust", "holds")


def _moment(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize("route", EXPIRING_ROUTES)
@pytest.mark.parametrize("seconds", [-3600, -1, 0], ids=["hour_ago", "second_ago", "now"])
def test_an_expires_at_not_in_the_future_is_a_400_naming_it(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions, route: str, seconds: float
) -> None:
    user = factory.user()
    response = client.post(
        f"/admin/points/{user.id}/{route}",
        json={"amount": 5, "expires_at": _moment(seconds)},
        headers=moderator.headers,
    )
    assert response.status_code == 400, response.json
    assert response.mimetype == "application/json" and response.json["code"] == 400
    assert [(e["field"], e["code"]) for e in response.json["errors"]] == [("expires_at", "past")]
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)


def test_a_negative_adjustment_with_expires_at_is_a_400_naming_it(
    client: FlaskClient, factory: Factory, sessions
) -> None:
    admin = factory.caller(Role.ADMIN)
    user = factory.user()
    for body in (
        {"amount": -5, "expires_at": _moment(3600)},
        {"amount": -5, "expires_at": _moment(3600), "allow_negative_balance": True},
        {"amount": -5, "expires_at": _moment(-3600)},
    ):
        response = _adjust(client, admin, str(user.id), body)
        assert response.status_code == 400, (body, response.json)
        assert response.json["code"] == 400
        (error,) = response.json["errors"]
        assert (error["field"], error["code"]) == ("expires_at", "only_positive"), body
        assert error["message"] == "only positive adjustments expire"
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)


def test_an_earn_retried_after_its_expiry_is_a_replay(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    user = factory.user()
    body = {"amount": 4, "expires_at": _moment(0.6), "idempotency_key": "earn-soon"}
    first = _adjust(client, moderator, str(user.id), body)
    assert first.status_code == 201, first.json
    time.sleep(0.8)
    # Its first answer lost, say: the retry finds the earn, it is no new one in the past.
    again = _adjust(client, moderator, str(user.id), body)
    assert again.status_code == 201, again.json
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json["data"]["transaction"]["id"] == first.json["data"]["transaction"]["id"]
    late = _adjust(client, moderator, str(user.id), body | {"idempotency_key": "earn-late"})
    assert late.status_code == 400
    assert [e["field"] for e in late.json["errors"]] == ["expires_at"]
    with sessions() as session:
        assert count_rows(session, factory.tenant_id)[0] == 1
