"""The item limit of the bulk routes (TALLY_BULK_MAX_ITEMS), applied as a body is read.

A body past the limit is refused at the first item too many: what follows it is never
read, so a body that is not even JSON after that point is refused as too many items,
where a body parsed whole first would be refused as invalid JSON (issue 21 item 3).
"""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import func, select

from shared.models import Batch
from tests.factories import Caller, Factory, count_rows

HEADER = "username,user_id,variation_points,context,comment\n"
# The JSON parser reads 64 KiB at a time: garbage further on is past what it has read.
PAST_A_READ = " " * 100_000


def _refused_as_too_many(response, field: str, limit: int) -> None:
    assert response.status_code == 400, response.json
    assert response.json["errors"] == [
        {"field": field, "code": "too_many", "message": f"at most {limit} items per batch"}
    ]


def _written(sessions, tenant_id: str) -> tuple[int, int]:
    """The tenant's (batches, adjustment requests)."""
    with sessions() as session:
        batches = session.scalar(select(func.count()).where(Batch.tenant_id == tenant_id))
        return batches or 0, count_rows(session, tenant_id)[0]


def test_json_items_past_the_limit_are_refused_without_reading_the_rest(
    app_with, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    client = app_with(bulk_max_items=10).test_client()
    item = json.dumps({"user_id": user.id, "score": 1, "comment": "x"})
    body = '{"items": [' + ",".join([item] * 11) + "," + PAST_A_READ + "not JSON at all"
    response = client.post(
        "/api/v2/score/bulk",
        data=body,
        content_type="application/json",
        headers=moderator.headers | {"Idempotency-Key": "past-json"},
    )
    _refused_as_too_many(response, "items", 10)
    assert _written(sessions, factory.tenant_id) == (0, 0)


def test_ndjson_lines_past_the_limit_are_refused_without_reading_the_rest(
    app_with, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    client = app_with(bulk_max_items=10).test_client()
    line = json.dumps({"user_id": user.id, "score": 1, "comment": "x"})
    response = client.post(
        "/api/v2/score/bulk",
        data="\n".join([line] * 11 + ["not JSON at all"] * 1000),
        content_type="application/x-ndjson",
        headers=moderator.headers | {"Idempotency-Key": "past-ndjson"},
    )
    _refused_as_too_many(response, "items", 10)
    assert _written(sessions, factory.tenant_id) == (0, 0)


def test_items_at_the_limit_are_accepted_with_defaults_that_follow_them(
    app_with, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    client = app_with(bulk_max_items=10).test_client()
    items = [{"user_id": user.id, "score": n + 1} for n in range(10)]
    response = client.post(
        "/api/v2/score/bulk",
        json={"items": items, "reputation_context": "contest|limit"},
        headers=moderator.headers | {"Idempotency-Key": "at-limit"},
    )
    assert response.status_code == 202, response.json
    assert response.json["total"] == 10
    assert _written(sessions, factory.tenant_id) == (1, 10)


def _import(client, caller: Caller, encoding: str, csv: str, dry_run: str):
    if encoding == "json":
        sent = {"json": {"csv_string": csv, "dry_run": dry_run}}
    else:
        sent = {"data": {"csv_file": (io.BytesIO(csv.encode()), "awards.csv"), "dry_run": dry_run}}
    return client.post("/api/v2/score/import/", headers=caller.headers, **sent)


@pytest.mark.parametrize(("encoding", "field"), [("json", "csv_string"), ("form", "csv_file")])
def test_an_import_past_the_limit_is_refused_and_writes_nothing(
    app_with, factory: Factory, moderator: Caller, sessions, encoding: str, field: str
) -> None:
    user = factory.user()
    client = app_with(bulk_max_items=10).test_client()
    rows = [f"{user.username},,{n + 1},contest|import,row {n}\n" for n in range(11)]
    for dry_run in ("false", "true"):
        response = _import(client, moderator, encoding, HEADER + "".join(rows), dry_run)
        _refused_as_too_many(response, field, 10)
    assert _written(sessions, factory.tenant_id) == (0, 0)
    # Ten rows (with the header and a blank row, which are not items) are one batch.
    accepted = _import(client, moderator, encoding, HEADER + "\n" + "".join(rows[:10]), "false")
    assert accepted.status_code == 202, accepted.json
    assert accepted.json["imported_rows"] == 10
    assert _written(sessions, factory.tenant_id) == (1, 10)
