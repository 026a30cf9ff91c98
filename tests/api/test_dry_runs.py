"""Dry runs of the bulk routes write nothing, for a valid batch too, and say what the real
run would do (issue 21 item 11: every other dry-run test sends a file with bad rows, so a
dry run that wrote a clean file would pass them all)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from shared.models import Account, Batch
from tests.factories import Caller, Factory, count_rows

HEADER = "username,user_id,variation_points,context,comment\n"


def _written(sessions, tenant_id: str) -> tuple[int, int, int, int]:
    """The tenant's (batches, requests, ledger entries, accounts)."""
    with sessions() as session:
        requests, entries = count_rows(session, tenant_id)
        batches = session.scalar(select(func.count()).where(Batch.tenant_id == tenant_id))
        accounts = session.scalar(select(func.count()).where(Account.tenant_id == tenant_id))
    return batches or 0, requests, entries, accounts or 0


@pytest.mark.parametrize(
    ("encoding", "flag"),
    [("json", None), ("json", True), ("form", "true"), ("form", None)],
    ids=["json_default", "json_true", "form_true", "form_default"],
)
def test_a_dry_run_of_a_valid_file_writes_nothing_and_says_what_it_would_import(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions, encoding: str, flag
) -> None:
    users = [factory.user() for _ in range(3)]
    csv = HEADER + "".join(
        f"{u.username},{u.id},{n + 1},contest|dry,row {n}\n" for n, u in enumerate(users)
    )
    fields = {"csv_string": csv} | ({} if flag is None else {"dry_run": flag})
    sent = {"json": fields} if encoding == "json" else {"data": fields}
    response = client.post("/api/v2/score/import/", headers=moderator.headers, **sent)
    assert response.status_code == 200, response.json
    assert response.json == {
        "total_rows": 3,
        "valid_rows": 3,
        "invalid_rows": 0,
        "total_points_variation": 6,
        "error_count": 0,
        "errors": [],
    }
    assert "Location" not in response.headers
    assert _written(sessions, factory.tenant_id) == (0, 0, 0, 0)
    # What it said is what the import does.
    committed = client.post(
        "/api/v2/score/import/",
        json={"csv_string": csv, "dry_run": False},
        headers=moderator.headers,
    )
    assert committed.status_code == 202, committed.json
    assert (committed.json["imported_rows"], committed.json["total_points_variation"]) == (3, 6)
    assert _written(sessions, factory.tenant_id)[:2] == (1, 3)


def test_a_bulk_dry_run_of_valid_items_writes_nothing_and_says_what_it_would_do(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    a, b = factory.user(), factory.user()
    # An item whose own key an earlier request has, with the same content: replayed.
    single = client.post(
        "/api/v2/score/",
        json={"user_id": a.id, "score": 3, "comment": "dry"},
        headers=moderator.headers | {"Idempotency-Key": "dry-own", "Prefer": "respond-async"},
    )
    assert single.status_code == 202, single.json
    items = [
        {"user_id": a.id, "score": 3, "idempotency_key": "dry-own"},
        {"user_id": b.id, "score": 4},
        {"username": b.username, "score": -2},
    ]
    before = _written(sessions, factory.tenant_id)
    assert before == (0, 1, 0, 1)
    headers = moderator.headers | {"Idempotency-Key": "dry-batch"}
    body = {"items": items, "comment": "dry"}
    response = client.post("/api/v2/score/bulk?dry_run=true", json=body, headers=headers)
    assert response.status_code == 200, response.json
    assert response.json == {"dry_run": True, "items": 3, "new": 2, "replayed": 1}
    assert "Location" not in response.headers
    assert _written(sessions, factory.tenant_id) == before
    # What it said is what the batch does.
    stored = client.post("/api/v2/score/bulk", json=body, headers=headers)
    assert stored.status_code == 202, stored.json
    assert (stored.json["total"], stored.json["replayed"]) == (2, 1)
    assert _written(sessions, factory.tenant_id)[:2] == (1, 3)
