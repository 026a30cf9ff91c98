"""Each rule a write route applies, held by a request on every route that applies it.

A rule pinned on one route only, or by its validator alone, can break on another route
unseen: issue 21 item 11 found the amount bound of /adjust held by no request. The cases
are parametrized over the routes; each checks the route's own error envelope (seed 002's
on /admin/points, problem+json on the community routes, a row or item report on the bulk
routes) and that nothing was written.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from shared.intake.adjustments import Adjustment
from shared.models import Account, AdjustmentRequest, Batch, LedgerEntry, Operation, Role, User
from shared.platform.config import Settings
from tests.factories import Caller, Factory, count_rows, reputation
from worker.app import TallyCelery

# The bounded app's max_amount: not the default, so that a route that ignored the setting
# (a constant, or another setting) would be caught.
MAX = 5000
# The limits SPEC.md promises, written out: a test that read them from shared.fields would
# follow a wrong constant.
COMMENT, CONTEXT, USERNAME, SHORT, KEY = 2000, 255, 150, 255, 255
ASYNC = {"Prefer": "respond-async"}
POINTS, PROBLEM = "application/json", "application/problem+json"


@pytest.fixture(scope="module")
def bounded(base_settings: Settings) -> Iterator[FlaskClient]:
    """A client of an app whose max_amount is MAX."""
    from api import create_app

    app = create_app(base_settings, max_amount=MAX)
    yield app.test_client()
    app.extensions["tally"].resources.close()


@pytest.fixture(scope="module")
def worker(celery_app: TallyCelery) -> Iterator[None]:
    """The conftest's real worker thread, started once for the module (a stop takes ~1 s)."""
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


@dataclass(frozen=True)
class Scene:
    """An admin and a user with something to act on: a points earn, a reputation earn
    (a score) and an open hold of 10 points."""

    client: FlaskClient
    caller: Caller
    user: User
    earn_ulid: str
    score_id: int
    hold_id: int
    hold_ulid: str
    sessions: sessionmaker[Session]

    def post(self, path: str, headers: dict[str, str] | None = None, **sent: Any) -> TestResponse:
        return self.client.post(path, headers=self.caller.headers | (headers or {}), **sent)

    def state(self) -> tuple[Any, ...]:
        """What a refused request must leave as it was: the tenant's requests, entries,
        batches and account statuses."""
        tenant = self.caller.tenant_id
        with self.sessions() as session:
            batches = session.scalar(select(func.count()).where(Batch.tenant_id == tenant))
            statuses = session.scalars(
                select(Account.status).where(Account.tenant_id == tenant).order_by(Account.id)
            ).all()
            return count_rows(session, tenant), batches, tuple(statuses)


@pytest.fixture
def scene(
    bounded: FlaskClient,
    factory: Factory,
    award: Callable[..., None],
    sessions: sessionmaker[Session],
) -> Scene:
    admin = factory.caller(Role.ADMIN)
    # A username as long as a username may be, so that a body can name it at the limit.
    user = factory.user("u" * USERNAME, external_id="ext_" + factory.tenant_id)
    award(
        admin,
        Adjustment(user_id=user.id, points_type="points", amount=100),
        reputation(user.id, 10, comment="given"),
        Adjustment(user_id=user.id, points_type="points", amount=10, entry_type=Operation.HOLD),
    )
    with sessions() as session:
        entries = {
            (entry.points_type, entry.type): entry
            for entry in session.scalars(
                select(LedgerEntry).where(LedgerEntry.tenant_id == factory.tenant_id)
            )
        }
        hold_id = session.scalar(
            select(AdjustmentRequest.id).where(
                AdjustmentRequest.user_id == user.id,
                AdjustmentRequest.entry_type == Operation.HOLD,
            )
        )
    assert hold_id is not None
    return Scene(
        bounded,
        admin,
        user,
        entries["points", "adjust"].ulid,
        entries["reputation", "adjust"].id,
        hold_id,
        entries["points", "hold"].ulid,
        sessions,
    )


# --- the single routes: one body each, answered in the route family's envelope -----------


@dataclass(frozen=True)
class Route:
    path: Callable[[Scene], str]
    # A valid body, the smallest the route takes.
    body: Callable[[Scene], dict[str, Any]]
    envelope: str
    # Whether it takes an idempotency key in the body too (seed 002's routes).
    body_key: bool = True


def _points(tail: str) -> Callable[[Scene], str]:
    """A path under the scene user's /admin/points/{user_id}; `{hold}` names its hold."""
    return lambda s: f"/admin/points/{s.user.external_id}" + tail.format(hold=s.hold_id)


ROUTES = {
    "score": Route(
        lambda s: "/api/v2/score/",
        lambda s: {"user_id": s.user.id, "score": 1, "comment": "ok"},
        PROBLEM,
        body_key=False,
    ),
    "score_reverse": Route(
        lambda s: f"/api/v2/score/{s.score_id}/reverse", lambda s: {}, PROBLEM, body_key=False
    ),
    "adjust": Route(_points("/adjust"), lambda s: {"amount": 1}, POINTS),
    "hold": Route(_points("/holds"), lambda s: {"amount": 1}, POINTS),
    "capture": Route(_points("/holds/{hold}/capture"), lambda s: {}, POINTS),
    "release": Route(_points("/holds/{hold}/release"), lambda s: {}, POINTS),
    "points_reverse": Route(
        lambda s: f"/admin/points/transactions/{s.earn_ulid}/reverse", lambda s: {}, POINTS
    ),
    "freeze": Route(_points("/freeze"), lambda s: {}, POINTS, body_key=False),
    "unfreeze": Route(_points("/unfreeze"), lambda s: {}, POINTS, body_key=False),
}
KEYED = [name for name in ROUTES if name not in ("freeze", "unfreeze")]


def _key_header(key: str | None) -> dict[str, Any]:
    """The Idempotency-Key header as sent (in the environ: the test client would refuse some
    of the bad ones)."""
    return {} if key is None else {"environ_overrides": {"HTTP_IDEMPOTENCY_KEY": key}}


def _send(scene: Scene, name: str, extra: dict[str, Any], key: str | None = None) -> TestResponse:
    route = ROUTES[name]
    body = route.body(scene) | extra
    return scene.post(route.path(scene), json=body, headers=ASYNC, **_key_header(key))


def _refused(name: str, response: TestResponse) -> list[tuple[str, str]]:
    """The (field, code) pairs of a 400 in the route's envelope."""
    envelope = ROUTES[name].envelope
    assert response.status_code == 400, response.json
    assert response.mimetype == envelope
    assert response.json["code" if envelope == POINTS else "status"] == 400
    return [(e["field"], e["code"]) for e in response.json["errors"]]


def _accepted(response: TestResponse) -> None:
    assert response.status_code in (200, 201, 202), response.json


# --- the bulk routes: items of score bodies, reported by position -------------------------


# The import's columns, by the score body's field each holds.
CSV_COLUMNS = ("username", "user_id", "score", "reputation_context", "comment")
CSV_FIELDS = {"score": "variation_points", "reputation_context": "context"}


def _csv(items: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for item in items:
        writer.writerow([item.get(column, "") for column in CSV_COLUMNS])
    return out.getvalue()


def _send_items(
    scene: Scene, route: str, items: list[dict[str, Any]], key: str | None = None
) -> TestResponse:
    """POST the items to the JSON bulk route or as a CSV import (committed or a dry run)."""
    if route == "bulk":
        sent = _key_header("batch" if key is None else key)
        return scene.post("/api/v2/score/bulk", json={"items": items}, **sent)
    body = {"csv_string": _csv(items), "dry_run": route == "import_dry_run"}
    return scene.post("/api/v2/score/import/", json=body, **_key_header(key))


def _item_errors(route: str, response: TestResponse) -> list[tuple[str, str]]:
    """The (field, message) pairs a bulk route's report gives its first item, in its own
    envelope (the CSV import's rows carry no code: the message says the limit)."""
    if route == "import_dry_run":
        assert response.status_code == 200, response.json
        assert (response.json["valid_rows"], response.json["invalid_rows"]) == (0, 1)
        errors = response.json["errors"]
    else:
        assert response.status_code == 400, response.json
        assert response.mimetype == PROBLEM
        errors = response.json["errors_by_item" if route == "bulk" else "errors"]
    position = "index" if route == "bulk" else "row_number"
    assert {e[position] for e in errors} == {0 if route == "bulk" else 1}
    return [(e["field"], e["message"]) for e in errors]


def _item_field(route: str, field: str) -> str:
    """How the route names a score body's field (the CSV import has its own column names)."""
    return field if route == "bulk" else CSV_FIELDS.get(field, field)


ITEM_ROUTES = ["bulk", "import", "import_dry_run"]


# --- amount bounds ----------------------------------------------------------------------


AMOUNT_ROUTES = {"score": "score", "adjust": "amount", "hold": "amount", "capture": "amount"}


@pytest.mark.parametrize("name", sorted(AMOUNT_ROUTES))
def test_an_amount_at_the_bound_is_accepted_and_past_it_refused(scene: Scene, name: str) -> None:
    field = AMOUNT_ROUTES[name]
    _accepted(_send(scene, name, {field: MAX}))
    before = scene.state()
    for amount in (MAX + 1, -(MAX + 1)):
        errors = _refused(name, _send(scene, name, {field: amount}))
        assert [f for f, _ in errors] == [field], amount
        # A hold or a capture refuses any negative amount for that reason first.
        positive_only = name in ("hold", "capture") and amount < 0
        assert errors[0][1] == ("not_positive" if positive_only else "out_of_range"), amount
    assert scene.state() == before


@pytest.mark.parametrize("route", ITEM_ROUTES)
def test_an_item_amount_at_the_bound_is_accepted_and_past_it_refused(
    scene: Scene, route: str
) -> None:
    item = {"user_id": scene.user.id, "reputation_context": "bound", "comment": "c"}
    before = scene.state()
    for amount in (MAX + 1, -(MAX + 1)):
        response = _send_items(scene, route, [item | {"score": amount}])
        assert _item_errors(route, response) == [
            (_item_field(route, "score"), f"must be between -{MAX} and {MAX}")
        ], amount
    assert scene.state() == before
    accepted = _send_items(scene, route, [item | {"score": MAX}])
    assert accepted.status_code == (200 if route == "import_dry_run" else 202), accepted.json
    if route == "import_dry_run":
        assert accepted.json["total_points_variation"] == MAX
        assert accepted.json["invalid_rows"] == 0


# --- required fields --------------------------------------------------------------------


def test_required_fields_are_named_on_every_single_route(scene: Scene) -> None:
    before = scene.state()
    score = ["user_id", "score", "reputation_context"]
    cases = {"score": score, "adjust": ["amount"], "hold": ["amount"]}
    for name, errors in cases.items():
        response = scene.post(ROUTES[name].path(scene), json={}, headers=ASYNC)
        assert sorted(_refused(name, response)) == sorted((f, "required") for f in errors), name
    assert scene.state() == before


@pytest.mark.parametrize("route", ITEM_ROUTES)
@pytest.mark.parametrize(
    ("item", "missing"),
    [
        ({"score": 1, "comment": "c", "reputation_context": "r"}, ["user_id"]),
        ({"user_id": "me", "comment": "c", "reputation_context": "r"}, ["score"]),
        ({"user_id": "me", "score": 1}, ["reputation_context"]),
    ],
    ids=["user", "score", "context"],
)
def test_required_fields_are_named_for_every_item(
    scene: Scene, route: str, item: dict[str, Any], missing: list[str]
) -> None:
    if item.get("user_id") == "me":
        item = item | {"user_id": scene.user.id}
    if route != "bulk" and missing == ["reputation_context"]:
        item = item | {"comment": "a comment is not a context"}  # the import needs a context
    before = scene.state()
    response = _send_items(scene, route, [item])
    fields = [field for field, _ in _item_errors(route, response)]
    assert fields == [_item_field(route, f) for f in missing]
    assert scene.state() == before


# --- text lengths -----------------------------------------------------------------------


TEXT_LIMITS = {
    "score": {"comment": COMMENT, "reputation_context": CONTEXT, "username": USERNAME},
    "score_reverse": {"comment": COMMENT},
    "adjust": {"reason": COMMENT, "source": SHORT, "related_id": SHORT},
    "hold": {"reason": COMMENT},
    "capture": {"reason": COMMENT},
    "release": {"reason": COMMENT},
    "points_reverse": {"reason": COMMENT},
    "freeze": {"reason": COMMENT},
    "unfreeze": {"reason": COMMENT},
}


@pytest.mark.parametrize(
    ("name", "field"), [(name, field) for name, limits in TEXT_LIMITS.items() for field in limits]
)
def test_text_one_past_its_limit_is_refused_naming_it(scene: Scene, name: str, field: str) -> None:
    before = scene.state()
    extra = {field: "x" * (TEXT_LIMITS[name][field] + 1)}
    if field == "username":
        extra["user_id"] = None
    assert _refused(name, _send(scene, name, extra)) == [(field, "too_long")]
    assert scene.state() == before


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_text_at_its_limits_and_a_key_of_255_characters_are_accepted(
    scene: Scene, name: str
) -> None:
    extra: dict[str, Any] = {field: "x" * limit for field, limit in TEXT_LIMITS[name].items()}
    if "username" in extra:
        extra |= {"username": scene.user.username, "user_id": None}
    _accepted(_send(scene, name, extra, "k" * KEY if name in KEYED else None))


@pytest.mark.parametrize("route", ITEM_ROUTES)
@pytest.mark.parametrize(
    ("field", "limit"),
    [("comment", COMMENT), ("reputation_context", CONTEXT), ("username", USERNAME)],
)
def test_item_text_past_its_limit_is_refused_and_at_it_accepted(
    scene: Scene, route: str, field: str, limit: int
) -> None:
    item: dict[str, Any] = {"score": 1, "reputation_context": "r", "comment": "c"}
    item |= {"username": scene.user.username} if field == "username" else {"user_id": scene.user.id}
    before = scene.state()
    response = _send_items(scene, route, [item | {field: "x" * (limit + 1)}])
    assert _item_errors(route, response) == [
        (_item_field(route, field), f"must be at most {limit} characters")
    ]
    assert scene.state() == before
    at_limit = scene.user.username if field == "username" else "x" * limit
    accepted = _send_items(scene, route, [item | {field: at_limit}])
    assert accepted.status_code in (200, 202), accepted.json
    if route == "import_dry_run":
        assert accepted.json["invalid_rows"] == 0


def test_bulk_defaults_past_their_limit_are_named_on_each_item(scene: Scene) -> None:
    before = scene.state()
    for field, limit in (("comment", COMMENT), ("reputation_context", CONTEXT)):
        response = scene.post(
            "/api/v2/score/bulk",
            json={"items": [{"user_id": scene.user.id, "score": 1}], field: "x" * (limit + 1)},
            headers={"Idempotency-Key": "defaults"},
        )
        assert _item_errors("bulk", response) == [(field, f"must be at most {limit} characters")]
    assert scene.state() == before


# --- idempotency keys -------------------------------------------------------------------


BAD_KEYS = ["k" * (KEY + 1), "caf\u00e9", "tab\there"]


@pytest.mark.parametrize("name", KEYED)
@pytest.mark.parametrize("key", BAD_KEYS, ids=["too_long", "not_ascii", "control"])
def test_a_bad_key_is_refused_naming_where_it_was_sent(scene: Scene, name: str, key: str) -> None:
    before = scene.state()
    response = _send(scene, name, {}, key)
    assert _refused(name, response) == [("Idempotency-Key", "invalid")]
    if ROUTES[name].body_key:
        response = _send(scene, name, {"idempotency_key": key})
        assert _refused(name, response) == [("idempotency_key", "invalid")]
    assert scene.state() == before


@pytest.mark.parametrize("route", ["bulk", "import"])
@pytest.mark.parametrize("key", BAD_KEYS, ids=["too_long", "not_ascii", "control"])
def test_a_bad_batch_key_is_refused(scene: Scene, route: str, key: str) -> None:
    before = scene.state()
    item = {"user_id": scene.user.id, "score": 1, "reputation_context": "r"}
    response = _send_items(scene, route, [item], key)
    assert response.status_code == 400, response.json
    assert response.mimetype == PROBLEM
    assert [(e["field"], e["code"]) for e in response.json["errors"]] == [
        ("Idempotency-Key", "invalid")
    ]
    assert scene.state() == before


def test_a_bad_key_looked_up_is_refused(scene: Scene) -> None:
    for key in BAD_KEYS:
        response = scene.client.get(
            "/api/v2/score/requests",
            query_string={"idempotency_key": key},
            headers=scene.caller.headers,
        )
        assert response.status_code == 400, response.json
        assert [(e["field"], e["code"]) for e in response.json["errors"]] == [
            ("idempotency_key", "invalid")
        ]


# --- points types -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adjust", "hold", "freeze", "unfreeze"])
def test_an_unknown_points_type_is_refused(scene: Scene, name: str) -> None:
    before = scene.state()
    for points_type in ("gold", "x" * (SHORT + 1)):
        errors = _refused(name, _send(scene, name, {"points_type": points_type}))
        assert [f for f, _ in errors] == ["points_type"], points_type
    assert scene.state() == before


# --- frozen accounts and the reasons of refusals ------------------------------------------


def _freeze(scene: Scene) -> None:
    for points_type in ("points", "reputation"):
        response = _send(scene, "freeze", {"points_type": points_type})
        assert response.status_code == 200, response.json


@pytest.mark.parametrize("name", KEYED)
def test_a_frozen_account_rejects_with_the_reason(scene: Scene, worker: None, name: str) -> None:
    _freeze(scene)
    route = ROUTES[name]
    response = scene.post(route.path(scene), json=route.body(scene))
    assert response.status_code == 409, response.json
    assert response.mimetype == route.envelope
    reason = response.json["reason" if route.envelope == POINTS else "code"]
    assert reason == "account_frozen"
    status = scene.client.get(response.headers["Location"], headers=scene.caller.headers).json
    assert (status["status"], status["error"]["code"]) == ("rejected", "account_frozen")


def test_a_frozen_account_rejects_bulk_items_with_the_reason(scene: Scene, worker: None) -> None:
    _freeze(scene)
    response = _send_items(scene, "bulk", [{"user_id": scene.user.id, "score": 1, "comment": "c"}])
    assert response.status_code == 202, response.json
    url = response.headers["Location"]
    deadline = time.monotonic() + 10
    while (status := scene.client.get(url, headers=scene.caller.headers).json)["status"] in (
        "queued",
        "processing",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["status"] == "completed_with_rejections"
    items = scene.client.get(url + "/items", headers=scene.caller.headers).json["results"]
    assert [item["error"]["code"] for item in items] == ["account_frozen"]


@pytest.mark.parametrize("name", ["score_reverse", "points_reverse"])
def test_reversing_an_entry_that_moved_no_points_is_not_reversible(scene: Scene, name: str) -> None:
    with scene.sessions() as session:
        hold_entry = session.scalars(
            select(LedgerEntry).where(LedgerEntry.ulid == scene.hold_ulid)
        ).one()
    path = (
        f"/api/v2/score/{hold_entry.id}/reverse"
        if name == "score_reverse"
        else f"/admin/points/transactions/{hold_entry.ulid}/reverse"
    )
    before = scene.state()
    response = scene.post(path, json={})
    assert response.status_code == 409, response.json
    assert response.mimetype == ROUTES[name].envelope
    reason = response.json["reason" if ROUTES[name].envelope == POINTS else "code"]
    assert reason == "not_reversible"
    assert scene.state() == before
