"""GET /api/v2/score/leaderboard/ and GET /api/v2/score/reputation_types/."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.intake.adjustments import Adjustment
from shared.models import Operation, Role
from tests.factories import Caller, Factory, ledger_of, queue_adjustments, reputation

URL = "/api/v2/score/leaderboard/"
Award = Callable[..., None]


def _board(client: FlaskClient, caller: Caller, **params: Any) -> dict[str, Any]:
    response = client.get(URL, query_string=params, headers=caller.headers)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    return body


def _totals(client: FlaskClient, caller: Caller, **params: Any) -> list[tuple[int, int]]:
    """(user_id, total_score) of every row of the first page."""
    rows = _board(client, caller, **params)["results"]
    return [(row["user_id"], row["total_score"]) for row in rows]


def test_totals_per_user_by_total_descending_then_user_id(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    mario = factory.user("mario.rossi", real_name="Mario Rossi")
    luigi = factory.user("luigi", real_name="Luigi")
    peach = factory.user("peach", real_name="Peach")
    bowser = factory.user("bowser", real_name="Bowser")
    factory.user("toad")  # no entries: not on the board
    award(
        moderator,
        reputation(mario.id, 10, comment="a"),
        reputation(mario.id, 5, comment="b"),
        reputation(luigi.id, 20, comment="c"),
        reputation(luigi.id, -5, comment="d"),
        reputation(peach.id, 30, comment="e"),
        reputation(bowser.id, -4, comment="f"),
    )

    body = _board(client, moderator)

    assert body["count"] == 4
    assert body["next"] is None
    assert body["previous"] is None
    rows = [(peach, 30), (mario, 15), (luigi, 15), (bowser, -4)]
    assert body["results"] == [
        {
            "user_id": user.id,
            "user__username": user.username,
            "user__real_name": user.real_name,
            "total_score": total,
            "rank": place,
        }
        for place, (user, total) in enumerate(rows, start=1)
    ]
    assert mario.id < luigi.id  # the tie is broken by user_id ascending


def test_an_account_without_entries_is_not_on_the_board(
    client: FlaskClient,
    factory: Factory,
    moderator: Caller,
    award: Award,
    sessions: sessionmaker[Session],
) -> None:
    ranked = factory.user()
    waiting = factory.user()
    award(moderator, reputation(ranked.id, 3, comment="applied"))
    # Recorded but not applied: the account exists with a zero balance and no entry.
    queue_adjustments(sessions, moderator, [reputation(waiting.id, 50, comment="queued")])

    assert _totals(client, moderator) == [(ranked.id, 3)]
    assert _totals(client, moderator, reputed_at_from="2000-01-01") == [(ranked.id, 3)]


def test_filters_user_id_search_and_reputation_type(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    mario = factory.user()
    luigi = factory.user()
    award(
        moderator,
        reputation(mario.id, 10, "contest|first_place", "Winner"),
        reputation(mario.id, 1, comment="100% helpful"),
        reputation(luigi.id, 4, "contest|second_place", "Runner-up"),
        reputation(luigi.id, 2, comment="100 helpful"),
    )

    assert _totals(client, moderator, user_id=luigi.id) == [(luigi.id, 6)]
    assert _totals(client, moderator, search="CONTEST") == [(mario.id, 10), (luigi.id, 4)]
    assert _totals(client, moderator, search="100%") == [(mario.id, 1)]
    assert _totals(client, moderator, search="winner", user_id=luigi.id) == []
    assert _totals(client, moderator, reputation_type=10) == [(mario.id, 11), (luigi.id, 6)]
    empty = _board(client, moderator, reputation_type=11)
    assert empty == {
        "count": 0,
        "next": None,
        "previous": None,
        "results": [],
        "period": {"period": "all", "starts": None, "from": None, "to": None},
    }


def test_reputed_at_window_is_inclusive(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    mario = factory.user()
    luigi = factory.user()
    award(moderator, reputation(mario.id, 1, comment="early"))
    time.sleep(0.01)
    award(moderator, reputation(luigi.id, 2, comment="middle"))
    time.sleep(0.01)
    award(moderator, reputation(mario.id, 4, comment="late"))
    listed = client.get("/api/v2/score/", headers=moderator.headers).json["results"]
    late, middle, early = (entry["reputed_at"] for entry in listed)

    assert _totals(client, moderator, reputed_at_from=middle) == [(mario.id, 4), (luigi.id, 2)]
    assert _totals(client, moderator, reputed_at_to=middle) == [(luigi.id, 2), (mario.id, 1)]
    assert _totals(client, moderator, reputed_at_from=middle, reputed_at_to=middle) == [
        (luigi.id, 2)
    ]
    naive = early.removesuffix("Z")
    assert _totals(client, moderator, reputed_at_from=naive, reputed_at_to=naive) == [(mario.id, 1)]
    assert _totals(client, moderator, reputed_at_from=late) == [(mario.id, 4)]


def test_exclude_manual_and_exclude_reset(
    client: FlaskClient,
    factory: Factory,
    moderator: Caller,
    award: Award,
    sessions: sessionmaker[Session],
) -> None:
    mario = factory.user()
    luigi = factory.user()
    award(
        moderator, reputation(mario.id, 10, comment="award"), reputation(luigi.id, 8, comment="x")
    )
    # A correction recorded as a `reversal` entry (reputation type 11, reversal).
    with sessions() as session:
        (awarded,) = ledger_of(session, mario.id)
    undo = reputation(mario.id, -10, comment="undo")
    award(
        moderator,
        dataclasses.replace(undo, entry_type=Operation.REVERSAL, related_id=awarded.ulid),
    )

    assert _totals(client, moderator) == [(luigi.id, 8), (mario.id, 0)]
    assert _totals(client, moderator, exclude_reset="true") == [(mario.id, 10), (luigi.id, 8)]
    assert _totals(client, moderator, exclude_reset="True") == [(mario.id, 10), (luigi.id, 8)]
    assert _totals(client, moderator, exclude_reset="false") == [(luigi.id, 8), (mario.id, 0)]
    assert _totals(client, moderator, exclude_manual="false") == [(luigi.id, 8), (mario.id, 0)]
    # Only the reversal is not manual (type 10).
    assert _totals(client, moderator, exclude_manual="true") == [(mario.id, -10)]


def test_entry_filters_and_balances_agree_when_nothing_is_filtered(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    users = [factory.user() for _ in range(5)]
    award(
        moderator,
        *(
            reputation(user.id, amount, comment="n")
            for index, user in enumerate(users)
            for amount in (index * 3, -index, 7)
            if amount
        ),
    )

    from_balances = _board(client, moderator, limit=3, offset=1)
    # Any entry-level filter sums the entries instead of reading balances.
    from_entries = _board(client, moderator, limit=3, offset=1, reputed_at_from="2000-01-01")

    assert from_balances["count"] == from_entries["count"] == 5
    assert from_balances["results"] == from_entries["results"]
    assert [row["total_score"] for row in from_balances["results"]] == [13, 11, 9]


def test_pages_with_limit_and_offset(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    users = [factory.user() for _ in range(5)]
    award(moderator, *(reputation(u.id, 10 * (i + 1), comment="p") for i, u in enumerate(users)))
    expected = [(u.id, 10 * (i + 1)) for i, u in reversed(list(enumerate(users)))]

    for extra in ({}, {"search": "p"}):
        first = _board(client, moderator, limit=2, **extra)
        assert first["count"] == 5
        assert [(r["user_id"], r["total_score"]) for r in first["results"]] == expected[:2]
        assert first["previous"] is None
        next_query = parse_qs(urlsplit(first["next"]).query)
        assert next_query == {**{k: [v] for k, v in extra.items()}, "limit": ["2"], "offset": ["2"]}
        second = client.get(first["next"], headers=moderator.headers).json
        assert [(r["user_id"], r["total_score"]) for r in second["results"]] == expected[2:4]
        assert second["previous"] is not None

        past = _board(client, moderator, limit=2, offset=7, **extra)
        assert past["count"] == 5
        assert past["results"] == []
        assert past["next"] is None
        assert parse_qs(urlsplit(past["previous"]).query)["offset"] == ["5"]


def test_only_the_default_points_type_and_the_callers_tenant_count(
    client: FlaskClient,
    factory: Factory,
    moderator: Caller,
    award: Award,
    sessions: sessionmaker[Session],
) -> None:
    mine = factory.user()
    award(
        moderator,
        reputation(mine.id, 2, comment="rep"),
        Adjustment(user_id=mine.id, points_type="points", amount=500, comment="points"),
    )
    elsewhere = Factory(sessions)
    their_moderator = elsewhere.caller(Role.MODERATOR)
    theirs = elsewhere.user()
    award(their_moderator, reputation(theirs.id, 99, comment="rep"))

    assert _totals(client, moderator) == [(mine.id, 2)]
    assert _totals(client, moderator, search="rep") == [(mine.id, 2)]
    assert _totals(client, moderator, user_id=theirs.id) == []
    assert _totals(client, moderator, user_id=theirs.id, search="rep") == []
    assert _totals(client, their_moderator) == [(theirs.id, 99)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"user_id": "x"}, "user_id"),
        ({"reputation_type": "manual"}, "reputation_type"),
        ({"reputation_type": str(2**31)}, "reputation_type"),
        ({"reputed_at_from": "last week"}, "reputed_at_from"),
        ({"reputed_at_to": "2026-02-30"}, "reputed_at_to"),
        ({"exclude_manual": "maybe"}, "exclude_manual"),
        ({"exclude_reset": "yes please"}, "exclude_reset"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "2.5"}, "limit"),
        ({"offset": "-3"}, "offset"),
    ],
)
def test_a_malformed_parameter_is_a_400_naming_it(
    client: FlaskClient, moderator: Caller, params: dict[str, str], field: str
) -> None:
    response = client.get(URL, query_string=params, headers=moderator.headers)

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert [error["field"] for error in response.json["errors"]] == [field]


def test_reputation_types_lists_manual_and_reversal(client: FlaskClient, moderator: Caller) -> None:
    response = client.get("/api/v2/score/reputation_types/", headers=moderator.headers)

    assert response.status_code == 200
    assert response.json == [
        {"id": 10, "name": "manual", "points": None},
        {"id": 11, "name": "reversal", "points": None},
    ]


@pytest.mark.parametrize("path", [URL, "/api/v2/score/reputation_types/"])
def test_needs_an_admin_or_moderator_token(
    client: FlaskClient, factory: Factory, path: str
) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers=factory.caller(Role.USER).headers).status_code == 403
    assert client.get(path, headers=factory.caller(Role.ADMIN).headers).status_code == 200
