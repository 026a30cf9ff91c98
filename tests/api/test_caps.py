"""Caps per day through the API: a cut shown on the request's status and its event, a
rejection `cap_reached`, exempt contexts, and `over: reject`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy import select, text

from shared.events.log import number_events
from shared.models import Account
from shared.platform.config import DEFAULT_POINTS_TYPES, Cap, PointsType
from shared.platform.db import transaction
from tests.factories import Caller, Factory, apply_now


def _capped(app_with: Callable[..., Flask], over: str) -> Flask:
    cap = Cap(100, per="day", over=over, exempt_contexts=("answer|accepted",))
    reputation = PointsType("reputation", allow_negative=True, exchange_rate=1, cap=cap)
    return app_with(points_types={**DEFAULT_POINTS_TYPES, "reputation": reputation})


def _score(app: Flask, caller: Caller, user_id: int, score: int, **body: Any) -> dict[str, Any]:
    """Post, apply with the app's own settings, and read the request's status."""
    client = app.test_client()
    headers = caller.headers | {"Prefer": "respond-async"}
    fields = {"user_id": user_id, "score": score, "comment": "c"} | body
    posted = client.post("/api/v2/score/", headers=headers, json=fields)
    assert posted.status_code == 202, posted.json
    celery = app.extensions["tally"]
    with celery.resources.sessions() as session:
        account = session.scalar(select(Account.id).where(Account.user_id == user_id))
    apply_now(celery, [account])
    status = client.get(posted.headers["Location"], headers=caller.headers)
    result: dict[str, Any] = status.json
    return result


def test_beyond_the_cap_an_adjustment_is_cut_and_with_no_room_rejected(
    app_with: Callable[..., Flask], factory: Factory, moderator: Caller
) -> None:
    app = _capped(app_with, "cut")
    user = factory.user().id
    first = _score(app, moderator, user, 80)
    assert (first["status"], first["cut"], first["score"]["score"]) == ("completed", 0, 80)
    second = _score(app, moderator, user, 50)
    assert (second["status"], second["cut"], second["score"]["score"]) == ("completed", 30, 20)
    exempt = _score(app, moderator, user, 40, reputation_context="answer|accepted|q1")
    assert (exempt["cut"], exempt["score"]["score"]) == (0, 40)
    spent = _score(app, moderator, user, -10)  # spends neither count nor give room back
    assert spent["score"]["score"] == -10
    full = _score(app, moderator, user, 5)
    assert full["status"] == "rejected" and full["error"]["code"] == "cap_reached"

    sessions = app.extensions["tally"].resources.sessions
    with transaction(sessions) as session:
        number_events(session)
    with sessions() as session:
        payload = session.scalar(
            text("SELECT payload FROM events WHERE type = 'request.applied'"
                 " AND (payload ->> 'request_id')::bigint = :id"),
            {"id": second["id"]},
        )  # fmt: skip
        reason = session.scalar(
            text("SELECT payload -> 'error' ->> 'code' FROM events"
                 " WHERE type = 'request.rejected' AND (payload ->> 'request_id')::bigint = :id"),
            {"id": full["id"]},
        )  # fmt: skip
    assert (payload["amount"], payload["cut"]) == (50, 30)
    assert reason == "cap_reached"
    board = app.test_client().get(
        "/api/v2/score/leaderboard/", query_string={"period": "day"}, headers=moderator.headers
    )
    assert board.json["results"][0]["total_score"] == 80 + 20 + 40 - 10


def test_over_reject_refuses_the_whole_adjustment_with_a_409(
    app_with: Callable[..., Flask], factory: Factory, moderator: Caller
) -> None:
    app = _capped(app_with, "reject")
    user = factory.user().id
    assert _score(app, moderator, user, 80)["cut"] == 0
    refused = _score(app, moderator, user, 50)
    assert refused["status"] == "rejected" and refused["error"]["code"] == "cap_reached"
    client = app.test_client()
    celery = app.extensions["tally"]
    with celery.resources.sessions() as session:
        account = session.scalar(select(Account.id).where(Account.user_id == user))
    # A synchronous caller gets the 409 (the request waits while the test applies it).
    applier = threading.Timer(0.3, apply_now, args=(celery, [account]))
    applier.start()
    answer = client.post("/api/v2/score/", headers=moderator.headers | {"Prefer": "wait=5"},
                         json={"user_id": user, "score": 30, "comment": "c"})  # fmt: skip
    applier.join()
    assert answer.status_code == 409
    assert answer.json["code"] == "cap_reached"
