"""Bulk awards: the CSV import and the JSON/NDJSON bulk route, one idempotent batch each."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from shared.models import Account, Batch, LedgerEntry
from tests.factories import Caller, Factory, assert_ledger_consistent, count_rows

HEADER = "username,user_id,variation_points,context,comment\n"


def _wait_batch(client: FlaskClient, caller: Caller, url: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        status = client.get(url, headers=caller.headers).json
        if status["status"] in ("completed", "completed_with_rejections"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_dry_run_is_the_default_writes_nothing_and_reports_every_bad_row(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    a, b = factory.user(), factory.user()
    csv = (HEADER + f"{a.username},,10,contest|spring,well done\n"
           f",{b.id},0,contest|spring,\n"
           f"nobody,,5,contest|spring,\n"
           f"{a.username},{b.id},5,contest,\n"
           f"{a.username},,x,a||b,\n")  # fmt: skip
    response = client.post(
        "/api/v2/score/import/", data={"csv_string": csv}, headers=moderator.headers
    )
    assert response.status_code == 200, response.json
    report = response.json
    assert (report["total_rows"], report["invalid_rows"], report["valid_rows"]) == (5, 4, 1)
    assert report["total_points_variation"] == 10
    fields = [(e["row_number"], e["field"]) for e in report["errors"]]
    assert fields == [
        (3, "variation_points"),
        (4, "username"),
        (5, "user_id"),
        (6, "variation_points"),
        (6, "context"),
    ]
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)


def test_one_bad_row_in_a_commit_run_writes_nothing(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    a = factory.user()
    csv = HEADER + f"{a.username},,10,contest|spring,\nnobody,,5,contest|spring,\n"
    response = client.post(
        "/api/v2/score/import/",
        json={"csv_string": csv, "dry_run": False},
        headers=moderator.headers,
    )
    assert response.status_code == 400
    assert response.json["errors"] == [
        {"row_number": 3, "field": "username", "message": "no such user"}
    ]
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)


def test_import_commits_one_batch_and_a_resubmission_creates_nothing(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    users = [factory.user() for _ in range(3)]
    csv = "".join(f"{u.username},{u.id},{i + 1},contest|spring|apis,prize\n"
                  for i, u in enumerate(users))  # fmt: skip
    form = {"csv_file": (__import__("io").BytesIO(csv.encode()), "awards.csv"),
            "dry_run": "false"}  # fmt: skip
    response = client.post("/api/v2/score/import/", data=form, headers=moderator.headers)
    assert response.status_code == 202, response.json
    body = response.json
    assert (body["imported_rows"], body["total_points_variation"]) == (3, 6)
    assert body["status_url"] == response.headers["Location"]
    status = _wait_batch(client, moderator, body["status_url"])
    assert status["counts"] == {"queued": 0, "processing": 0, "completed": 3, "rejected": 0}
    assert status["progress"] == 1.0 and status["completed_at"].endswith("Z")

    again = client.post(
        "/api/v2/score/import/",
        data={"csv_string": csv, "dry_run": "false"},
        headers=moderator.headers,
    )
    assert again.status_code == 202
    assert again.json["batch_id"] == body["batch_id"]
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (3, 3)


def test_bulk_json_and_ndjson_with_defaults_and_index_errors(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    user = factory.user()
    bad = client.post(
        "/api/v2/score/bulk",
        json={"items": [{"user_id": user.id, "score": 1}, {"user_id": user.id, "score": 0}]},
        headers=moderator.headers | {"Idempotency-Key": "bulk-bad"},
    )
    assert bad.status_code == 400
    assert bad.json["errors_by_item"][0]["index"] == 0  # no context nor comment
    zero = {"index": 1, "field": "score", "code": "zero", "message": "must not be 0"}
    assert zero in bad.json["errors_by_item"]
    ok = client.post(
        "/api/v2/score/bulk",
        json={"items": [{"user_id": user.id, "score": 2}, {"username": user.username, "score": 3}],
              "reputation_context": "contest|bulk"},
        headers=moderator.headers | {"Idempotency-Key": "bulk-ok"},
    )  # fmt: skip
    assert ok.status_code == 202, ok.json
    _wait_batch(client, moderator, ok.headers["Location"])
    lines = "\n".join(json.dumps({"user_id": user.id, "score": 5, "comment": "nd"})
                      for _ in range(4))  # fmt: skip
    nd = client.post(
        "/api/v2/score/bulk",
        data=lines,
        content_type="application/x-ndjson",
        headers=moderator.headers | {"Idempotency-Key": "bulk-nd"},
    )
    assert nd.status_code == 202
    _wait_batch(client, moderator, nd.headers["Location"])
    with sessions() as session:
        entries = session.scalars(
            select(LedgerEntry)
            .join(Account, Account.id == LedgerEntry.account_id)
            .where(Account.user_id == user.id)
        ).all()
        assert sorted(e.amount for e in entries) == [2, 3, 5, 5, 5, 5]
        assert_ledger_consistent(session, entries[0].account_id)
    assert client.post(
        "/api/v2/score/bulk", json={"items": []},
        headers=moderator.headers | {"Idempotency-Key": "bulk-none"},
    ).status_code == 400  # fmt: skip
    assert client.post(
        "/api/v2/score/bulk", json={"items": [{"user_id": user.id, "score": 1, "comment": "c"}]},
        headers=moderator.headers,
    ).status_code == 400  # no batch key  # fmt: skip


def test_batch_items_with_their_reasons(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    user = factory.user()
    ok = client.post(
        "/api/v2/score/bulk",
        json={"items": [{"user_id": user.id, "score": 4, "comment": "x"}]},
        headers=moderator.headers | {"Idempotency-Key": "items-1"},
    )
    batch_url = ok.headers["Location"]
    _wait_batch(client, moderator, batch_url)
    items = client.get(batch_url + "/items?status=completed", headers=moderator.headers).json
    assert items["count"] == 1
    assert items["results"][0]["score"]["score"] == 4
    assert items["results"][0]["idempotency_key"] == "items-1:0"
    none = client.get(batch_url + "/items?status=rejected", headers=moderator.headers).json
    assert none["count"] == 0
    stranger = Factory(sessions).caller()
    assert client.get(batch_url, headers=stranger.headers).status_code == 404


def test_a_batch_mixed_with_concurrent_single_adjustments(
    flask_app: Flask, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    users = [factory.user() for _ in range(20)]
    expected: dict[int, int] = defaultdict(int)
    items = []
    for n in range(2000):
        user = users[n % len(users)]
        items.append({"user_id": user.id, "score": 1 + n % 4, "comment": "batch"})
        expected[user.id] += 1 + n % 4
    singles: list[tuple[int, int]] = []

    def post_singles(offset: int) -> None:
        client = flask_app.test_client()
        for n in range(60):
            user = users[(n + offset) % len(users)]
            response = client.post(
                "/api/v2/score/",
                json={"user_id": user.id, "score": -2, "comment": f"single-{offset}"},
                headers=moderator.headers | {"Prefer": "respond-async"},
            )
            assert response.status_code in (201, 202)
            singles.append((user.id, -2))

    threads = [threading.Thread(target=post_singles, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    client = flask_app.test_client()
    response = client.post(
        "/api/v2/score/bulk",
        json={"items": items},
        headers=moderator.headers | {"Idempotency-Key": "mixed"},
    )
    assert response.status_code == 202
    for thread in threads:
        thread.join()
    _wait_batch(client, moderator, response.headers["Location"])
    for user_id, amount in singles:
        expected[user_id] += amount
    deadline = time.monotonic() + 30
    with sessions() as session:
        for user in users:
            account = session.scalars(select(Account).where(Account.user_id == user.id)).one()
            while account.balance != expected[user.id] and time.monotonic() < deadline:
                time.sleep(0.05)
                session.expire_all()
                account = session.get_one(Account, account.id)
            assert account.balance == expected[user.id]
            assert_ledger_consistent(session, account.id)
            # Acceptance order: within the batch, and within each sequential client.
            by_source: dict[str, list[int]] = defaultdict(list)
            for request_id, comment in session.execute(
                select(LedgerEntry.request_id, LedgerEntry.comment)
                .where(LedgerEntry.account_id == account.id)
                .order_by(LedgerEntry.id)
            ):
                by_source[comment].append(request_id)
            for request_ids in by_source.values():
                assert request_ids == sorted(request_ids)


def test_bulk_limits_items_and_body_size(app_with, factory: Factory, moderator: Caller) -> None:
    user = factory.user()
    item = {"user_id": user.id, "score": 1, "comment": "x"}
    client = app_with(bulk_max_items=2, bulk_max_body_bytes=4096).test_client()
    headers = moderator.headers | {"Idempotency-Key": "limits"}
    too_many = client.post("/api/v2/score/bulk", json={"items": [item] * 3}, headers=headers)
    assert too_many.status_code == 400
    assert too_many.json["errors"][0]["field"] == "items"
    too_big = client.post(
        "/api/v2/score/bulk", json={"items": [item | {"comment": "y" * 5000}]}, headers=headers
    )
    assert too_big.status_code == 413


def _bulk(client: FlaskClient, caller: Caller, key: str, items: list) -> object:
    return client.post(
        "/api/v2/score/bulk",
        json={"items": items, "reputation_context": "contest|keys"},
        headers=caller.headers | {"Idempotency-Key": key},
    )


@pytest.mark.parametrize("bad_key", [42, ["k"], {"k": 1}, True, "", "caf\u00e9"])
def test_an_item_key_that_is_not_a_short_ascii_string_is_a_400(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions, bad_key
) -> None:
    user = factory.user()
    items = [{"user_id": user.id, "score": 1}, {"user_id": user.id, "score": 1,
                                                 "idempotency_key": bad_key}]  # fmt: skip
    response = _bulk(client, moderator, "keys-type", items)
    assert response.status_code == 400, response.json
    (error,) = response.json["errors_by_item"]
    assert (error["index"], error["field"]) == (1, "idempotency_key")
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)


def test_item_keys_repeated_in_a_batch_are_a_400_naming_both_items(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    items = [
        {"user_id": user.id, "score": 1, "idempotency_key": "same"},
        {"user_id": user.id, "score": 2},
        {"user_id": user.id, "score": 3, "idempotency_key": "same"},
        # An explicit key equal to the key item 1 gets by default (batch key:position).
        {"user_id": user.id, "score": 4, "idempotency_key": "keys-dup:1"},
    ]
    response = _bulk(client, moderator, "keys-dup", items)
    assert response.status_code == 400, response.json
    named = [(e["index"], e["code"]) for e in response.json["errors_by_item"]]
    assert named == [(0, "duplicate"), (1, "duplicate"), (2, "duplicate"), (3, "duplicate")]
    assert response.json["error_count"] == 4
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)


def test_an_item_key_already_used_by_another_request_is_a_400_naming_the_item(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    single = client.post(
        "/api/v2/score/",
        json={"user_id": user.id, "score": 5, "comment": "single"},
        headers=moderator.headers | {"Idempotency-Key": "taken", "Prefer": "respond-async"},
    )
    assert single.status_code == 202
    items = [{"user_id": user.id, "score": 1}, {"user_id": user.id, "score": 1,
                                                 "idempotency_key": "taken"}]  # fmt: skip
    response = _bulk(client, moderator, "keys-taken", items)
    assert response.status_code == 400, response.json
    assert [(e["index"], e["code"]) for e in response.json["errors_by_item"]] == [(1, "in_use")]
    with sessions() as session:
        assert count_rows(session, factory.tenant_id)[0] == 1  # only the single request
        assert session.scalar(select(func.count()).where(Batch.tenant_id == factory.tenant_id)) == 0


def test_a_csv_field_past_the_csv_limit_is_a_400_naming_the_row(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    user = factory.user()
    csv = (
        HEADER
        + f"{user.username},,1,contest|a,ok\n"
        + f"{user.username},,1,contest|a,{'x' * 140_000}\n"
    )
    for dry_run in ("true", "false"):
        response = client.post(
            "/api/v2/score/import/",
            data={"csv_string": csv, "dry_run": dry_run},
            headers=moderator.headers,
        )
        assert response.status_code == 400, response.json
        (error,) = response.json["errors"]
        assert (error["row_number"], error["field"]) == (3, "row")
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)


def test_error_reports_list_the_first_thousand_errors_and_count_them_all(
    client: FlaskClient, factory: Factory, moderator: Caller
) -> None:
    user = factory.user()
    items = [{"user_id": user.id, "score": 0} for _ in range(2500)]
    response = _bulk(client, moderator, "many-errors", items)
    assert response.status_code == 400
    assert response.json["error_count"] == 2500
    assert len(response.json["errors_by_item"]) == len(response.json["errors"]) == 1000


def test_a_batchs_entries_are_on_the_period_boards_as_a_group_by_sums_them(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None, sessions
) -> None:
    """Bulk items are applied in chunks over many accounts: each period's board is what a
    GROUP BY over the tenant's entries gives, and its totals pass reconcile's check."""
    from sqlalchemy import text

    from shared.ledger.periods import SUMS

    users = [factory.user() for _ in range(5)]
    items = [{"user_id": users[n % 5].id, "score": (n % 7) - 2 or 9, "comment": f"i{n}"}
             for n in range(60)]  # fmt: skip
    headers = moderator.headers | {"Idempotency-Key": "bulk-periods"}
    accepted = client.post("/api/v2/score/bulk", json={"items": items}, headers=headers)
    assert accepted.status_code == 202, accepted.json
    _wait_batch(client, moderator, accepted.headers["Location"])
    with sessions() as session:
        grouped = dict(
            session.execute(
                text("SELECT a.user_id, sum(e.amount) FROM ledger_entries e"
                     " JOIN accounts a ON a.id = e.account_id WHERE e.tenant_id = :t"
                     " GROUP BY a.user_id"),
                {"t": moderator.tenant_id},
            ).all()
        )  # fmt: skip
        summed = session.execute(
            text(f"SELECT count(*) FROM ({SUMS}) s FULL JOIN period_totals t"
                 " ON t.account_id = s.account_id AND t.period = s.period"
                 " AND t.starts = s.starts"
                 " WHERE (s.tenant_id = :tenant OR t.tenant_id = :tenant)"
                 " AND (s.total IS DISTINCT FROM t.total"
                 "      OR s.entries IS DISTINCT FROM t.entries)"),
            {"tenant": moderator.tenant_id},
        ).scalar()  # fmt: skip
    assert summed == 0
    for period in ("day", "week", "month", "quarter", "year", "all"):
        board = client.get("/api/v2/score/leaderboard/", headers=moderator.headers,
                           query_string={"period": period, "limit": 10}).json  # fmt: skip
        assert {row["user_id"]: row["total_score"] for row in board["results"]} == grouped
