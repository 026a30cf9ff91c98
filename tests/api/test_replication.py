"""TALLY_REPLICATION: no acknowledgement without a synchronous standby ("required"), or
acknowledgements said to be unreplicated ("preferred").

The test PostgreSQL has no standby: `synchronous_standby_names` is empty there, which is
what Patroni sets when it gives up on synchronous replication (non-strict mode). The
HA suite (tests/ha/) shows the same with a real standby that goes away.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from shared.models import AdjustmentRequest
from tests.factories import Caller


def _adjust(client: FlaskClient, caller: Caller, **headers: str) -> TestResponse:
    """POST one score adjustment of the caller's own user, answered at once."""
    return client.post(
        "/api/v2/score/",
        json={"user_id": caller.user_id, "score": 1, "comment": "x"},
        headers={"Authorization": f"Bearer {caller.token}", "Prefer": "respond-async"} | headers,
    )


def _replication_gauge(client: FlaskClient) -> float | None:
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        if family.name == "tally_replication_synchronous":
            return family.samples[0].value
    return None


def test_required_refuses_every_write_with_a_503_and_writes_nothing(
    app_with: Callable[..., Flask], moderator: Caller, sessions: sessionmaker[Session]
) -> None:
    client = app_with(replication="required").test_client()
    answer = _adjust(client, moderator)
    assert answer.status_code == 503
    assert answer.json["code"] == "replication_unavailable"
    assert "no synchronous standby" in answer.json["detail"]
    assert answer.headers["Retry-After"]
    with sessions() as session:  # nothing was recorded
        assert (
            session.scalar(
                select(func.count()).where(AdjustmentRequest.tenant_id == moderator.tenant_id)
            )
            == 0
        )
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "no synchronous standby" in ready.json["checks"]["replication"]
    assert ready.json["checks"]["database"] == "ok"
    assert _replication_gauge(client) == 0


def test_preferred_acknowledges_and_says_it_is_not_replicated(
    app_with: Callable[..., Flask], moderator: Caller
) -> None:
    client = app_with(replication="preferred").test_client()
    assert _adjust(client, moderator).status_code == 202
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"]["replication"].startswith("acknowledgements are not replicated")
    assert _replication_gauge(client) == 0


def test_a_single_database_host_is_not_watched(app_with: Callable[..., Flask]) -> None:
    client = app_with(replication="none").test_client()
    assert "replication" not in client.get("/readyz").json["checks"]
    assert _replication_gauge(client) is None
