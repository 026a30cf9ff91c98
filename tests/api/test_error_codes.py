"""Every rejection names its kind in a machine-readable code (issue 24): `code` in a problem
(application/problem+json), `reason` in seed 002's envelope (whose `code` is the HTTP
status, as the seed has it). The tests walk each kind of 4xx that each family can answer.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from shared.models import Account, Role, User
from shared.platform.config import DEFAULT_POINTS_TYPES, Cap, PointsType
from tests.factories import Caller, Factory, apply_now

TOO_LARGE = "x" * 70_000
MISSING_ID = 2**62
# (what was asked, the answer, the status and the code it must have)
Case = tuple[str, TestResponse, int, str]


def _applied(
    app: Flask, caller: Caller, url: str, body: dict[str, Any], user: User, key: str = ""
) -> TestResponse:
    """POST an operation, apply the user's accounts here, and POST it again with its key:
    the answer the request ended with (its 201, or its 409 with the worker's reason)."""
    client = app.test_client()
    headers = caller.headers | {"Idempotency-Key": key or secrets.token_hex(8)}
    client.post(url, json=body, headers=headers | {"Prefer": "respond-async"})
    celery = app.extensions["tally"]
    with celery.resources.sessions() as session:
        accounts = list(session.scalars(select(Account.id).where(Account.user_id == user.id)))
    apply_now(celery, accounts)
    return client.post(url, json=body, headers=headers)


def _missing_codes(cases: list[Case], member: str) -> list[str]:
    """The cases whose answer has another status, or lacks the code in `member`."""
    wrong = []
    for asked, answer, status, code in cases:
        body = answer.get_json(silent=True) or {}
        if (answer.status_code, body.get(member)) != (status, code):
            wrong.append(f"{asked}: {answer.status_code} {member}={body.get(member)!r}")
    return wrong


def _undocumented(client: FlaskClient, schema: str, member: str, cases: list[Case]) -> set[str]:
    """The codes of `cases` that the OpenAPI document does not name for `member`."""
    properties = client.get("/openapi.json").json["components"]["schemas"][schema]["properties"]
    return {code for *_, code in cases if code not in properties[member]["description"]}


def test_every_rejection_of_the_points_routes_has_a_reason_beside_its_status(
    flask_app: Flask,
    client: FlaskClient,
    app_with: Callable[..., Flask],
    factory: Factory,
    moderator: Caller,
) -> None:
    admin = factory.caller(Role.ADMIN)
    user = factory.user()
    base = f"/admin/points/{user.id}"

    def post(url: str, body: Any, caller: Caller = admin, **headers: str) -> TestResponse:
        return client.post(url, json=body, headers=caller.headers | headers)

    def applied(url: str, body: dict[str, Any], app: Flask = flask_app) -> TestResponse:
        return _applied(app, admin, url, body, user)

    def reverse(transaction_id: str) -> str:
        return f"/admin/points/transactions/{transaction_id}/reverse"

    earned = applied(f"{base}/adjust", {"amount": 50, "points_type": "cash_equivalent"})
    earned_id = earned.json["data"]["transaction"]["id"]
    assert applied(reverse(earned_id), {}).status_code == 201
    assert applied(f"{base}/adjust", {"amount": 50}).status_code == 201
    released = applied(f"{base}/holds", {"amount": 10}).json["data"]["hold"]["id"]
    assert applied(f"{base}/holds/{released}/release", {}).status_code == 201
    held = applied(f"{base}/holds", {"amount": 5}).json["data"]
    assert post(f"{base}/adjust", {"amount": 1}, **{"Idempotency-Key": "once"}).status_code == 202
    # The entry's points type, configured no more; a cap of 60 points a day; a rate limit.
    known = {name: kind for name, kind in DEFAULT_POINTS_TYPES.items() if name == "points"}
    unconfigured = app_with(points_types=known).test_client()
    capped_points = PointsType("points", False, 100, cap=Cap(60, per="day", over="reject"))
    capped = app_with(points_types={**DEFAULT_POINTS_TYPES, "points": capped_points})
    limited = app_with(rate_limit="1/minute").test_client()
    assert limited.get(base, headers=admin.headers).status_code == 200

    cases: list[Case] = [
        ("a bad amount", post(f"{base}/adjust", {"amount": 0}), 400, "validation"),
        ("an unknown points type", post(f"{base}/adjust", {"amount": 1, "points_type": "gold"}),
         400, "validation"),
        ("no token", client.post(f"{base}/adjust", json={"amount": 1}), 401, "unauthorized"),
        ("a moderator forcing a negative balance",
         post(f"{base}/adjust", {"amount": -1, "allow_negative_balance": True}, moderator), 403,
         "forbidden"),
        ("an unknown user", post("/admin/points/usr_nobody/adjust", {"amount": 1}), 404,
         "not_found"),
        ("an unknown hold", post(f"{base}/holds/{MISSING_ID}/release", {}), 404, "not_found"),
        ("no such route", client.get(f"{base}/nothing", headers=admin.headers), 404,
         "not_found"),
        ("a method the route lacks", client.get(f"{base}/adjust", headers=admin.headers), 405,
         "method_not_allowed"),
        ("a body too large", client.post(f"{base}/adjust", data=TOO_LARGE,
                                         content_type="application/json",
                                         headers=admin.headers), 413, "content_too_large"),
        ("an unsupported content type", client.post(f"{base}/adjust", data="amount=1",
                                                    content_type="text/plain",
                                                    headers=admin.headers), 415,
         "unsupported_media_type"),
        ("a key reused with another body",
         post(f"{base}/adjust", {"amount": 2}, **{"Idempotency-Key": "once"}), 422,
         "idempotency_key_reused"),
        ("a rate limit", limited.get(base, headers=admin.headers), 429, "too_many_requests"),
        ("an insufficient balance", applied(f"{base}/adjust", {"amount": -1000}), 409,
         "insufficient_balance"),
        ("a hold not open", applied(f"{base}/holds/{released}/capture", {}), 409,
         "hold_not_open"),
        ("a capture beyond its hold",
         applied(f"{base}/holds/{held['hold']['id']}/capture", {"amount": 6}), 409,
         "capture_exceeds_hold"),
        ("a second reversal", post(reverse(earned_id), {}), 409, "already_reversed"),
        ("the reversal of a hold", post(reverse(held["transaction"]["id"]), {}), 409,
         "not_reversible"),
        ("an entry of a points type configured no more",
         unconfigured.post(reverse(earned_id), json={}, headers=admin.headers), 409,
         "unknown_points_type"),
        ("a cap reached", applied(f"{base}/adjust", {"amount": 61}, capped), 409,
         "cap_reached"),
    ]  # fmt: skip
    assert post(f"{base}/freeze", {}).status_code == 200
    frozen = applied(f"{base}/adjust", {"amount": 1})
    cases.append(("a frozen account", frozen, 409, "account_frozen"))

    assert [answer.json["code"] for _, answer, _, _ in cases] == [c[2] for c in cases]
    wrong = _missing_codes(cases, "reason")
    assert wrong == [], "\n".join(wrong)
    assert _undocumented(client, "ErrorEnvelope", "reason", cases) == set()


def test_every_rejection_of_the_problem_routes_has_a_code(
    flask_app: Flask, client: FlaskClient, factory: Factory, moderator: Caller
) -> None:
    admin = factory.caller(Role.ADMIN)
    user = factory.user()

    def post(url: str, body: Any, caller: Caller = moderator, **headers: str) -> TestResponse:
        return client.post(url, json=body, headers=caller.headers | headers)

    score = {"user_id": user.id, "score": 5, "comment": "c"}
    post("/api/v2/score/", score, **{"Idempotency-Key": "once"})
    assert post("/api/v2/users/", {"username": "taken"}, admin).status_code == 201
    # Points that may not go negative, spent: their entry's reversal is refused.
    points = f"/admin/points/{user.id}/adjust"
    _applied(flask_app, moderator, points, {"amount": 5}, user, key="earned")
    _applied(flask_app, moderator, points, {"amount": -5}, user)
    earned = client.get("/api/v2/score/requests", query_string={"idempotency_key": "earned"},
                        headers=moderator.headers).json["score"]  # fmt: skip

    cases: list[Case] = [
        ("a bad score", post("/api/v2/score/", score | {"score": 0}), 400, "validation"),
        ("a bad filter", client.get("/api/v2/score/", query_string={"limit": "x"},
                                    headers=moderator.headers), 400, "validation"),
        ("a bad batch", post("/api/v2/score/bulk", {"items": [{"score": 1}]},
                             **{"Idempotency-Key": "b"}), 400, "validation"),
        ("a bad CSV file", client.post("/api/v2/score/import/",
                                       data={"csv_string": "u,,x,c,\n", "dry_run": "false"},
                                       headers=moderator.headers), 400, "validation"),
        ("no token", client.post("/api/v2/score/", json=score), 401, "unauthorized"),
        ("a moderator creating a user", post("/api/v2/users/", {"username": "u"}), 403,
         "forbidden"),
        ("an unknown request", client.get(f"/api/v2/score/requests/{MISSING_ID}",
                                          headers=moderator.headers), 404, "not_found"),
        ("no such route", client.get("/api/v2/nothing", headers=moderator.headers), 404,
         "not_found"),
        ("a method the route lacks", client.delete("/api/v2/score/", headers=moderator.headers),
         405, "method_not_allowed"),
        ("a username taken", post("/api/v2/users/", {"username": "taken"}, admin), 409,
         "conflict"),
        ("a body too large", client.post("/api/v2/score/", data=TOO_LARGE,
                                         content_type="application/json",
                                         headers=moderator.headers), 413, "content_too_large"),
        ("an unsupported content type", client.post("/api/v2/score/", data="x",
                                                    content_type="text/plain",
                                                    headers=moderator.headers), 415,
         "unsupported_media_type"),
        ("a key reused with another body",
         post("/api/v2/score/", score | {"score": 6}, **{"Idempotency-Key": "once"}), 422,
         "idempotency_key_reused"),
        ("a reversal below zero",
         _applied(flask_app, moderator, f"/api/v2/score/{earned['id']}/reverse", {}, user), 409,
         "insufficient_balance"),
    ]  # fmt: skip
    freeze = f"/admin/points/{user.id}/freeze"
    assert post(freeze, {"points_type": "reputation"}, admin).status_code == 200
    frozen = _applied(flask_app, moderator, "/api/v2/score/", score, user)
    cases.append(("a frozen account", frozen, 409, "account_frozen"))

    assert [answer.mimetype for _, answer, _, _ in cases] == ["application/problem+json"] * len(
        cases
    )
    wrong = _missing_codes(cases, "code")
    assert wrong == [], "\n".join(wrong)
    assert _undocumented(client, "Problem", "code", cases) == set()
