"""History reads: balances as of a moment, statements, the export, and a board's own rank.

Entries are written by the real applier, one chunk each, so every one has a moment of
its own; as-of answers are compared with replaying the entries up to each moment.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.fields import format_timestamp
from shared.intake.adjustments import Adjustment
from shared.models import Role, User
from shared.reads.history import ExportKind, _export_query, _within
from tests.factories import Caller, Factory, ledger_of, reputation

Award = Callable[..., None]
MICRO = timedelta(microseconds=1)


@pytest.fixture
def admin(factory: Factory) -> Caller:
    return factory.caller(Role.ADMIN)


def points(user: User, amount: int) -> Adjustment:
    return Adjustment(user_id=user.id, points_type="points", amount=amount, reason="r")


def _get(client: FlaskClient, caller: Caller, url: str, **params: Any) -> Any:
    response = client.get(url, query_string=params, headers=caller.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def test_as_of_equals_replaying_the_entries_up_to_that_moment(
    client: FlaskClient, factory: Factory, admin: Caller, award: Award,
    sessions: sessionmaker[Session],
) -> None:  # fmt: skip
    user = factory.user()
    for amount in (50, -20, 7, 100, -37):
        award(admin, points(user, amount))
    with sessions() as session:
        entries = ledger_of(session, user.id, "points")
    assert len(entries) == 5
    url = f"/admin/points/{user.id}"
    before_all = _get(client, admin, url, as_of=format_timestamp(entries[0].created_at - MICRO))
    assert before_all["data"][0]["balance"] == 0
    assert before_all["as_of"] == format_timestamp(entries[0].created_at - MICRO)
    for index, entry in enumerate(entries):
        replay = entries[: index + 1]
        answer = _get(client, admin, url, as_of=format_timestamp(entry.created_at))["data"][0]
        assert answer["balance"] == sum(e.amount for e in replay) == entry.balance_after
        assert answer["total_earned"] == sum(e.amount for e in replay if e.amount > 0)
        assert answer["total_spent"] == -sum(e.amount for e in replay if e.amount < 0)
    now = _get(client, admin, url)["data"][0]
    assert "as_of" not in _get(client, admin, url)
    assert now["balance"] == entries[-1].balance_after == 100

    community = _get(client, admin, f"/api/v2/users/{user.id}")
    assert community["reputation"] == 0 and "as_of" not in community


def test_reputation_as_of_on_the_community_user(
    client: FlaskClient, factory: Factory, admin: Caller, award: Award,
    sessions: sessionmaker[Session],
) -> None:  # fmt: skip
    user = factory.user()
    award(admin, reputation(user.id, 10, comment="a"))
    award(admin, reputation(user.id, 5, comment="b"))
    with sessions() as session:
        first, second = ledger_of(session, user.id)
    url = f"/api/v2/users/{user.id}"
    at_first = _get(client, admin, url, as_of=format_timestamp(first.created_at))
    assert (at_first["reputation"], at_first["as_of"]) == (10, format_timestamp(first.created_at))
    assert _get(client, admin, url, as_of=format_timestamp(second.created_at))["reputation"] == 15
    response = client.get(url, query_string={"as_of": "yesterday"}, headers=admin.headers)
    assert response.status_code == 400
    assert response.json["errors"][0]["field"] == "as_of"


def test_a_statement_opens_closes_sums_by_type_and_pages_its_entries(
    client: FlaskClient, factory: Factory, admin: Caller, award: Award,
    sessions: sessionmaker[Session],
) -> None:  # fmt: skip
    user = factory.user()
    for amount in (40, 60, -25, 10, -5, 30):
        award(admin, points(user, amount))
    with sessions() as session:
        entries = ledger_of(session, user.id, "points")
    begins, ends = entries[1].created_at, entries[5].created_at  # [second, sixth)
    url = f"/admin/points/{user.id}/statement"
    params = {"from": format_timestamp(begins), "to": format_timestamp(ends), "limit": 3}
    first = _get(client, admin, url, **params)["data"]
    assert first["opening"]["balance"] == 40 == entries[0].balance_after
    assert first["closing"]["balance"] == 80 == entries[4].balance_after
    assert first["totals"] == [{"type": "adjust", "amount": 40, "entries": 4}]
    assert [e["amount"] for e in first["entries"]] == [60, -25, 10]
    assert first["next"] is not None
    second = client.get(first["next"], headers=admin.headers).json["data"]
    assert [e["amount"] for e in second["entries"]] == [-5]
    assert second["next"] is None
    assert second["opening"] == first["opening"]

    reversed_range = client.get(
        url, query_string={"from": params["to"], "to": params["from"]}, headers=admin.headers
    )
    assert reversed_range.status_code == 400
    assert reversed_range.json["errors"][0]["field"] == "to"


def test_the_community_statement_is_of_the_users_reputation(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    user = factory.user()
    award(moderator, reputation(user.id, 10, comment="a"), reputation(user.id, -3, comment="b"))
    body = _get(client, moderator, f"/api/v2/users/{user.id}/statement")
    assert body["points_type"] == "reputation"
    assert body["opening"]["balance"] == 0 and body["closing"]["balance"] == 7
    assert [e["amount"] for e in body["entries"]] == [10, -3]


def test_the_export_streams_every_entry_in_id_order_and_resumes_after_a_cursor(
    client: FlaskClient, factory: Factory, admin: Caller, award: Award
) -> None:
    user = factory.user()
    award(admin, *[points(user, amount) for amount in (5, 6, 7)])
    response = client.get("/api/v2/export", query_string={"format": "ndjson"},
                          headers=admin.headers)  # fmt: skip
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    rows = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    mine = [row for row in rows if row["user_id"] == user.id]
    assert [row["amount"] for row in mine] == [5, 6, 7]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    resumed = client.get(
        "/api/v2/export", query_string={"format": "csv", "after": mine[0]["id"]},
        headers=admin.headers,
    )  # fmt: skip
    table = list(csv.DictReader(io.StringIO(resumed.get_data(as_text=True))))
    assert [int(row["amount"]) for row in table if row["user_id"] == str(user.id)] == [6, 7]
    assert all(int(row["id"]) > mine[0]["id"] for row in table)

    requests = client.get("/api/v2/export", query_string={"kind": "requests"},
                          headers=admin.headers)  # fmt: skip
    lines = [json.loads(line) for line in requests.get_data(as_text=True).splitlines()]
    assert {row["status"] for row in lines if row["user_id"] == user.id} == {"completed"}


def test_ndjson_in_groups_keeps_every_line_in_id_order_from_any_cursor(
    client: FlaskClient, factory: Factory, admin: Caller, award: Award,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """NDJSON comes from PostgreSQL a group of lines at a time (JSON_GROUP, here 2 so the
    entries span several): no line is lost, doubled or out of order, across groups and
    after a cursor at the start, the middle or the end of one."""
    monkeypatch.setattr("shared.reads.history.JSON_GROUP", 2)
    user = factory.user()
    award(admin, *[points(user, amount) for amount in range(1, 10)])

    def export(after: int) -> list[dict[str, Any]]:
        response = client.get("/api/v2/export", query_string={"after": after},
                              headers=admin.headers)  # fmt: skip
        assert response.status_code == 200
        return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]

    rows = export(after=0)
    ids = [row["id"] for row in rows]
    assert ids == sorted(set(ids))
    mine = [row for row in rows if row["user_id"] == user.id]
    assert [row["amount"] for row in mine] == list(range(1, 10))
    for cursor in ids:
        assert [row["id"] for row in export(after=cursor)] == [i for i in ids if i > cursor]


AWKWARD = 'a "quote", a \\ backslash, a\nnewline, a tab\t, \x01 and \u00e9\u20ac\U0001f600'


@pytest.mark.parametrize("kind", ["entries", "requests"])
def test_each_ndjson_line_is_the_text_row_to_json_writes(
    client: FlaskClient, factory: Factory, admin: Caller, award: Award,
    sessions: sessionmaker[Session], kind: ExportKind,
) -> None:  # fmt: skip
    """The export builds its JSON by concatenation: it must be the very text PostgreSQL's
    own `row_to_json` writes for the same columns, escapes, nulls and times included."""
    plain = factory.user(external_id=AWKWARD)
    award(admin, points(plain, 5))
    odd = factory.user()  # no external id: null
    award(admin, Adjustment(
        user_id=odd.id, points_type="points", amount=3, reputation_context=AWKWARD,
        comment=AWKWARD, reason="\\", source='"', related_id="\u2028",
        expires_at=datetime(2031, 1, 2, 3, 4, 5, 600, tzinfo=UTC),
    ))  # fmt: skip
    response = client.get("/api/v2/export", query_string={"kind": kind, "format": "ndjson"},
                          headers=admin.headers)  # fmt: skip
    # Lines end at "\n" alone: JSON text may hold U+2028, which str.splitlines() splits at.
    lines = response.get_data().decode().removesuffix("\n").split("\n")
    reference = _export_query(kind, as_json=False)
    with sessions() as session:
        raw = session.connection().connection.driver_connection
        assert raw is not None
        rows = raw.execute(
            f"SELECT row_to_json(r)::text FROM ({reference}) r",
            {"tenant": plain.tenant_id, "after": 0,
             **_within(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))},
        ).fetchall()  # fmt: skip
    assert lines == [row[0] for row in rows]
    mine = [json.loads(line) for line in lines]
    assert {row["user_id"] for row in mine} >= {plain.id, odd.id}
    assert AWKWARD in {row["external_id"] for row in mine}
    assert None in {row["external_id"] for row in mine}


def test_the_export_is_for_admins_and_names_a_bad_format(
    client: FlaskClient, moderator: Caller, admin: Caller
) -> None:
    assert client.get("/api/v2/export", headers=moderator.headers).status_code == 403
    response = client.get("/api/v2/export", query_string={"format": "xml"}, headers=admin.headers)
    assert response.status_code == 400
    assert response.json["errors"][0]["field"] == "format"


def test_own_rank_on_a_period_board(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    mario, luigi, peach = factory.user(), factory.user(), factory.user()
    award(
        moderator,
        reputation(mario.id, 10, comment="a"),
        reputation(luigi.id, 10, comment="b"),
        reputation(peach.id, 3, comment="c"),
    )
    url = "/api/v2/score/leaderboard/me"
    mine = _get(client, moderator, url, user_id=peach.id, period="week", ranking="rank")
    assert (mine["rank"], mine["total_score"], mine["count"]) == (3, 3, 3)
    assert mine["period"]["period"] == "week"
    dense = _get(client, moderator, url, user_id=peach.id, period="day", ranking="dense_rank")
    assert dense["rank"] == 2
    caller = _get(client, moderator, url, period="month")
    assert (caller["user_id"], caller["rank"], caller["total_score"]) == (
        moderator.user_id, None, 0,
    )  # fmt: skip
    board = _get(client, moderator, "/api/v2/score/leaderboard/", period="year", ranking="rank")
    assert [row["rank"] for row in board["results"]] == [1, 1, 3]
    bad = client.get(url, query_string={"period": "fortnight"}, headers=moderator.headers)
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "period"
