"""GET /api/v2/score/: Score objects, filters, ordering, pages, 400s and tenant isolation."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.intake.adjustments import Adjustment
from shared.models import Role
from tests.factories import Caller, Factory, reputation

URL = "/api/v2/score/"
Award = Callable[..., None]


def _list(client: FlaskClient, caller: Caller, **params: Any) -> dict[str, Any]:
    response = client.get(URL, query_string=params, headers=caller.headers)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    return body


def _scores(client: FlaskClient, caller: Caller, **params: Any) -> list[int]:
    return [item["score"] for item in _list(client, caller, **params)["results"]]


def _query_of(link: str) -> dict[str, list[str]]:
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("", "", URL)
    return parse_qs(parts.query)


def test_lists_score_objects_newest_first_ties_by_id(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    mario = factory.user("mario.rossi", real_name="Mario Rossi")
    # One apply run: all three entries share one reputed_at, so the order is by -id.
    award(
        moderator,
        reputation(mario.id, 10, "contest|first_place|apis", "Winner of the APIS contest"),
        reputation(mario.id, -3, comment="typo"),
        reputation(mario.id, 7, "contest|second_place"),
    )

    body = _list(client, moderator)

    assert body["count"] == 3
    assert body["next"] is None
    assert body["previous"] is None
    results = body["results"]
    assert [r["score"] for r in results] == [7, -3, 10]
    assert [r["id"] for r in results] == sorted((r["id"] for r in results), reverse=True)
    oldest = results[-1]
    assert oldest == {
        "id": oldest["id"],
        "user": {
            "id": mario.id,
            "username": "mario.rossi",
            "real_name": "Mario Rossi",
            "email": "",
            "description": "",
            "avatar": "https://example.com/avatar.jpg",
            "reputation": 10,
        },
        "score": 10,
        "reputation_type": 10,
        "reputation_type_description": "manual",
        "comment": "Winner of the APIS contest",
        "reputation_context": "contest|first_place|apis",
        "created_by": {
            "id": moderator.user_id,
            "username": moderator.username,
            "avatar": "https://example.com/avatar.jpg",
        },
        "reputed_at": oldest["reputed_at"],
    }
    assert oldest["reputed_at"].endswith("Z")
    # user.reputation is the balance right after each entry, so lists are deterministic.
    assert [r["user"]["reputation"] for r in results] == [14, 7, 10]


def test_an_entry_written_through_the_api_is_listed_as_post_answered_it(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None
) -> None:
    user = factory.user()
    body = {"user_id": user.id, "score": 4, "reputation_context": "a|b", "comment": "hi"}
    created = client.post(URL, json=body, headers=moderator.headers)
    assert created.status_code == 201

    assert _list(client, moderator)["results"] == [created.json]


def test_ordering_by_reputed_at_and_score_in_both_directions(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    user = factory.user()
    for amount in (5, -3, 10, 5):
        award(moderator, reputation(user.id, amount, comment="c"))  # one reputed_at each

    by_time = _list(client, moderator, ordering="reputed_at")["results"]
    assert [r["score"] for r in by_time] == [5, -3, 10, 5]
    assert [r["reputed_at"] for r in by_time] == sorted(r["reputed_at"] for r in by_time)
    assert _scores(client, moderator, ordering="-reputed_at") == [5, 10, -3, 5]
    assert _scores(client, moderator) == [5, 10, -3, 5]

    ascending = _list(client, moderator, ordering="score")["results"]
    assert [r["score"] for r in ascending] == [-3, 5, 5, 10]
    assert ascending[1]["id"] < ascending[2]["id"]  # ties by id, in the same direction
    descending = _list(client, moderator, ordering="-score")["results"]
    assert [r["score"] for r in descending] == [10, 5, 5, -3]
    assert descending[1]["id"] > descending[2]["id"]


def test_filters_by_user_id_and_username(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    mario = factory.user("mario.rossi")
    luigi = factory.user("luigi")
    award(moderator, reputation(mario.id, 1, comment="m"), reputation(luigi.id, 2, comment="l"))

    assert _scores(client, moderator, user_id=mario.id) == [1]
    assert _scores(client, moderator, user_id=str(luigi.id)) == [2]
    assert _scores(client, moderator, username="luigi") == [2]
    assert _scores(client, moderator, username="mario.rossi", user_id=luigi.id) == []
    assert _list(client, moderator, username="nobody")["count"] == 0
    assert _list(client, moderator, user_id=2**63 - 1)["count"] == 0
    assert sorted(_scores(client, moderator, user_id="", username="  ")) == [1, 2]


def test_reputation_context_matches_whole_leading_segments(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    user = factory.user()
    contexts = [
        "contest|first_place",
        "contest|first_place|apis",
        "contest|first",
        "contest|first_placement",
        "other|contest|first_place",
        "a_b|x",
        "axb|x",
        "50%|x",
        "50 percent|x",
    ]
    award(moderator, *(reputation(user.id, 1, context) for context in contexts))

    def contexts_for(value: str) -> list[str]:
        results = _list(client, moderator, reputation_context=value)["results"]
        return sorted(r["reputation_context"] for r in results)

    assert contexts_for("contest|first_place") == [
        "contest|first_place",
        "contest|first_place|apis",
    ]
    assert contexts_for(" contest | first_place ") == contexts_for("contest|first_place")
    assert contexts_for("contest|first") == ["contest|first"]
    assert contexts_for("contest|first_place|apis") == ["contest|first_place|apis"]
    assert len(contexts_for("contest")) == 4
    assert contexts_for("a_b") == ["a_b|x"]
    assert contexts_for("50%") == ["50%|x"]
    assert contexts_for("contest|first_place|apis|more") == []


def test_search_is_a_case_insensitive_literal_substring_of_comment_or_context(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    user = factory.user()
    award(
        moderator,
        reputation(user.id, 1, comment="Winner of the APIS contest"),
        reputation(user.id, 2, comment="100% done"),
        reputation(user.id, 3, comment="100 done"),
        reputation(user.id, 4, comment="a_b"),
        reputation(user.id, 5, comment="axb"),
        reputation(user.id, 6, "contest|first_place"),
        reputation(user.id, 7, comment="back\\slash"),
    )

    assert _scores(client, moderator, search="winner") == [1]
    assert _scores(client, moderator, search="APIS CONTEST") == [1]
    assert _scores(client, moderator, search="100%") == [2]
    assert _scores(client, moderator, search="a_b") == [4]
    assert _scores(client, moderator, search="FIRST_PLACE") == [6]
    assert sorted(_scores(client, moderator, search="contest")) == [1, 6]
    assert _scores(client, moderator, search="k\\s") == [7]
    assert _scores(client, moderator, search="/") == []
    assert _scores(client, moderator, search="%") == [2]


def test_created_after_and_before_are_inclusive_and_naive_means_utc(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    user = factory.user()
    award(moderator, reputation(user.id, 1, comment="early"))
    time.sleep(0.01)
    award(moderator, reputation(user.id, 2, comment="middle"))
    time.sleep(0.01)
    award(moderator, reputation(user.id, 3, comment="late"))
    late, middle, early = (r["reputed_at"] for r in _list(client, moderator)["results"])
    assert early < middle < late

    assert _scores(client, moderator, created_after=middle) == [3, 2]
    assert _scores(client, moderator, created_before=middle) == [2, 1]
    assert _scores(client, moderator, created_after=middle, created_before=middle) == [2]
    naive = middle.removesuffix("Z")
    assert _scores(client, moderator, created_after=naive, created_before=naive) == [2]
    in_rome = datetime.fromisoformat(middle).astimezone(timezone(timedelta(hours=2)))
    assert in_rome.isoformat().endswith("+02:00")
    assert _scores(client, moderator, created_after=in_rome.isoformat()) == [3, 2]
    assert _scores(client, moderator, created_after="2000-01-01") == [3, 2, 1]
    assert _scores(client, moderator, created_before="2000-01-01T00:00:00Z") == []
    assert _scores(client, moderator, created_before="2000-01-01T00:00:00+23:00") == []


def test_pages_with_limit_and_offset_keep_the_other_parameters(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    user = factory.user()
    other = factory.user()
    award(moderator, *(reputation(user.id, amount, comment="p") for amount in range(1, 6)))
    award(moderator, reputation(other.id, 100, comment="p"))

    first = _list(client, moderator, user_id=user.id, ordering="score", limit=2)
    assert first["count"] == 5
    assert [r["score"] for r in first["results"]] == [1, 2]
    assert first["previous"] is None
    assert _query_of(first["next"]) == {
        "user_id": [str(user.id)],
        "ordering": ["score"],
        "limit": ["2"],
        "offset": ["2"],
    }

    second = client.get(first["next"], headers=moderator.headers).json
    assert [r["score"] for r in second["results"]] == [3, 4]
    assert _query_of(second["previous"]) == {
        "user_id": [str(user.id)],
        "ordering": ["score"],
        "limit": ["2"],
    }
    last = client.get(second["next"], headers=moderator.headers).json
    assert [r["score"] for r in last["results"]] == [5]
    assert last["next"] is None
    assert _query_of(last["previous"])["offset"] == ["2"]

    past = _list(client, moderator, user_id=user.id, limit=2, offset=10)
    assert past["count"] == 5
    assert past["results"] == []
    assert past["next"] is None
    assert _query_of(past["previous"])["offset"] == ["8"]

    shifted = _list(client, moderator, user_id=user.id, ordering="score", limit=2, offset=1)
    assert [r["score"] for r in shifted["results"]] == [2, 3]
    assert "offset" not in _query_of(shifted["previous"])


def test_limit_defaults_to_20_and_is_capped_at_1000(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    user = factory.user()
    award(moderator, *(reputation(user.id, 1, comment="n") for _ in range(21)))

    default = _list(client, moderator)
    assert default["count"] == 21
    assert len(default["results"]) == 20
    assert _query_of(default["next"]) == {"limit": ["20"], "offset": ["20"]}

    capped = _list(client, moderator, limit=5000, offset=1)
    assert len(capped["results"]) == 20
    assert _query_of(capped["previous"]) == {"limit": ["1000"]}


def test_only_entries_of_the_default_points_type_are_listed(
    client: FlaskClient, factory: Factory, moderator: Caller, award: Award
) -> None:
    user = factory.user()
    award(
        moderator,
        reputation(user.id, 1, comment="rep"),
        Adjustment(user_id=user.id, points_type="points", amount=50, comment="points"),
    )

    assert _scores(client, moderator) == [1]


def test_another_tenants_entries_never_appear(
    client: FlaskClient,
    factory: Factory,
    moderator: Caller,
    award: Award,
    sessions: sessionmaker[Session],
) -> None:
    mine = factory.user("same.name")
    award(moderator, reputation(mine.id, 1, "contest|x", "shared words"))
    elsewhere = Factory(sessions)
    their_moderator = elsewhere.caller(Role.MODERATOR)
    theirs = elsewhere.user("same.name")
    award(their_moderator, reputation(theirs.id, 2, "contest|x", "shared words"))

    assert _scores(client, moderator) == [1]
    assert _scores(client, moderator, username="same.name") == [1]
    assert _scores(client, moderator, search="shared") == [1]
    assert _scores(client, moderator, reputation_context="contest") == [1]
    assert _list(client, moderator, user_id=theirs.id)["count"] == 0
    assert _scores(client, their_moderator) == [2]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"user_id": "abc"}, "user_id"),
        ({"user_id": "1.5"}, "user_id"),
        ({"user_id": str(2**63)}, "user_id"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2026-13-01"}, "created_before"),
        ({"created_before": "0001-01-01T00:00:00+05:00"}, "created_before"),
        ({"ordering": "id"}, "ordering"),
        ({"ordering": "-comment"}, "ordering"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1e3"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"offset": str(2**70)}, "offset"),
        ({"reputation_context": "a||b"}, "reputation_context"),
        ({"reputation_context": "a|"}, "reputation_context"),
        ({"search": "nul\x00"}, "search"),
        ({"username": "x" * 151}, "username"),
    ],
)
def test_a_malformed_parameter_is_a_400_naming_it(
    client: FlaskClient, moderator: Caller, params: dict[str, str], field: str
) -> None:
    response = client.get(URL, query_string=params, headers=moderator.headers)

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert [error["field"] for error in response.json["errors"]] == [field]
    assert all(error["code"] and error["message"] for error in response.json["errors"])


def test_every_bad_parameter_is_named_at_once(client: FlaskClient, moderator: Caller) -> None:
    params = {"user_id": "x", "ordering": "nope", "limit": "-5"}
    response = client.get(URL, query_string=params, headers=moderator.headers)

    assert response.status_code == 400
    assert sorted(e["field"] for e in response.json["errors"]) == ["limit", "ordering", "user_id"]


def test_needs_an_admin_or_moderator_token(
    client: FlaskClient, factory: Factory, moderator: Caller
) -> None:
    assert client.get(URL).status_code == 401
    plain_user = factory.caller(Role.USER)
    assert client.get(URL, headers=plain_user.headers).status_code == 403
    admin = factory.caller(Role.ADMIN)
    assert client.get(URL, headers=admin.headers).status_code == 200


def test_get_and_post_share_the_url(client: FlaskClient, moderator: Caller) -> None:
    response = client.put(URL, headers=moderator.headers)

    assert response.status_code == 405
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["Allow"].split(",")}
