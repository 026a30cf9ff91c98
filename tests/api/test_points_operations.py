"""Holds, reversals, freezes: seed 002's points operations through the one accept path.

Each operation: its happy path and what the account shows after, each of its 409s,
its idempotent replay, its 400s, 404s and 403s. A real worker applies what is accepted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from flask.testing import FlaskClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from shared.ledger.apply import REJECTION_MESSAGES, Rejection
from shared.models import AdjustmentRequest, Role, User
from tests.api.test_points import ACCOUNT_FIELDS, TIMESTAMP, ULID
from tests.factories import Caller, Factory, count_rows
from worker.app import TallyCelery

HOLD_FIELDS = {
    "id",
    "account_id",
    "amount",
    "captured",
    "status",
    "expires_at",
    "created_at",
    "closed_at",
}
FAR_FUTURE = "2030-01-01T00:00:00Z"
MISSING_ID = 2**62


@pytest.fixture(scope="module")
def worker(celery_app: TallyCelery) -> Iterator[None]:
    """The conftest's real worker thread, started once for the module (a stop takes ~1 s)."""
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


@pytest.fixture
def admin(factory: Factory) -> Caller:
    return factory.caller(Role.ADMIN)


@dataclass(frozen=True)
class Desk:
    """One caller's points operations on one user's accounts."""

    client: FlaskClient
    caller: Caller
    user: User

    @property
    def base(self) -> str:
        return f"/admin/points/{self.user.id}"

    def post(self, url: str, body: Any = None, **headers: str) -> TestResponse:
        return self.client.post(
            url, json={} if body is None else body, headers=self.caller.headers | headers
        )

    def get(self, url: str, **query: Any) -> TestResponse:
        return self.client.get(url, query_string=query, headers=self.caller.headers)

    def adjust(self, amount: int, **body: Any) -> dict[str, Any]:
        """An applied adjustment's transaction (a 201 is asserted)."""
        response = self.post(f"{self.base}/adjust", {"amount": amount} | body)
        assert response.status_code == 201, response.json
        transaction: dict[str, Any] = response.json["data"]["transaction"]
        return transaction

    def hold(self, body: dict[str, Any], **headers: str) -> TestResponse:
        return self.post(f"{self.base}/holds", body, **headers)

    def placed(self, amount: int, **body: Any) -> int:
        """An applied hold's id (a 201 is asserted)."""
        response = self.hold({"amount": amount} | body)
        assert response.status_code == 201, response.json
        hold_id: int = response.json["data"]["hold"]["id"]
        return hold_id

    def capture(self, hold_id: int, body: Any = None, **headers: str) -> TestResponse:
        return self.post(f"{self.base}/holds/{hold_id}/capture", body, **headers)

    def release(self, hold_id: int, body: Any = None, **headers: str) -> TestResponse:
        return self.post(f"{self.base}/holds/{hold_id}/release", body, **headers)

    def read_hold(self, hold_id: int) -> TestResponse:
        return self.get(f"{self.base}/holds/{hold_id}")

    def reverse(self, ulid: str, body: Any = None, **headers: str) -> TestResponse:
        return self.post(f"/admin/points/transactions/{ulid}/reverse", body, **headers)

    def account(self, points_type: str = "points") -> dict[str, Any]:
        accounts = self.get(self.base).json["data"]
        found: dict[str, Any] = next(a for a in accounts if a["points_type"] == points_type)
        return found

    def totals(self) -> tuple[int, int, int, int, int]:
        """The points account's (balance, frozen_balance, total_earned, total_spent,
        expired_points)."""
        a = self.account()
        return (
            a["balance"],
            a["frozen_balance"],
            a["total_earned"],
            a["total_spent"],
            a["expired_points"],
        )


@pytest.fixture
def desk(client: FlaskClient, factory: Factory, admin: Caller) -> Desk:
    return Desk(client, admin, factory.user(external_id="ext_" + factory.tenant_id))


def _refused(desk: Desk, response: TestResponse, code: str) -> None:
    """A 409 of the worker: the envelope with the reason, and the request stored rejected."""
    assert response.status_code == 409, response.json
    assert response.mimetype == "application/json"
    assert response.json["code"] == 409
    assert response.json["message"] == REJECTION_MESSAGES[code]
    assert response.json["reason"] == code  # issue 20: the reason is in the envelope too
    status = desk.client.get(response.headers["Location"], headers=desk.caller.headers).json
    assert (status["status"], status["error"]["code"]) == ("rejected", code)
    assert status["score"] is None


def _requests_with_key(sessions: sessionmaker[Session], tenant_id: str, key: str) -> int:
    with sessions() as session:
        return (
            session.scalar(
                select(func.count()).where(
                    AdjustmentRequest.tenant_id == tenant_id,
                    AdjustmentRequest.idempotency_key == key,
                )
            )
            or 0
        )


def _replayed(first: TestResponse, again: TestResponse) -> None:
    """The same answer again, marked as a replay."""
    assert again.status_code == first.status_code, again.json
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.json.get("data", again.json) == first.json.get("data", first.json)


# --- holds -----------------------------------------------------------------------------


def test_hold_moves_spendable_points_to_frozen_balance(desk: Desk, worker: None) -> None:
    desk.adjust(100)
    response = desk.hold({"amount": 30, "reason": "order 1", "expires_at": FAR_FUTURE})
    assert response.status_code == 201, response.json
    assert (response.json["code"], response.json["message"]) == (0, "completed")
    data = response.json["data"]
    account, transaction, hold = data["account"], data["transaction"], data["hold"]
    for name, kind in ACCOUNT_FIELDS.items():
        assert isinstance(account[name], kind), name
    assert set(hold) == HOLD_FIELDS
    assert isinstance(hold["id"], int) and hold["account_id"] == account["id"]
    assert (hold["amount"], hold["captured"], hold["status"]) == (30, 0, "open")
    assert hold["expires_at"] == FAR_FUTURE and hold["closed_at"] is None
    assert TIMESTAMP.match(hold["created_at"])
    assert ULID.match(transaction["id"]) and transaction["status"] == "completed"
    assert (transaction["type"], transaction["amount"]) == ("hold", 0)
    assert (transaction["balance_before"], transaction["balance_after"]) == (100, 100)
    assert transaction["related_id"] == str(hold["id"]) and transaction["reason"] == "order 1"
    assert (account["balance"], account["frozen_balance"], account["total_spent"]) == (100, 30, 0)
    assert desk.totals() == (100, 30, 100, 0, 0)
    read = desk.read_hold(hold["id"])
    assert read.status_code == 200 and read.json["data"] == hold

    # Spendable is balance - frozen_balance: 70 may be held or spent, not 71.
    _refused(desk, desk.hold({"amount": 71}), Rejection.INSUFFICIENT_BALANCE)
    spend = desk.post(f"{desk.base}/adjust", {"amount": -71})
    _refused(desk, spend, Rejection.INSUFFICIENT_BALANCE)
    assert desk.totals() == (100, 30, 100, 0, 0)
    desk.placed(70)
    assert desk.totals() == (100, 100, 100, 0, 0)


def test_capture_takes_the_held_points_all_or_part(desk: Desk, worker: None) -> None:
    desk.adjust(100)
    whole = desk.placed(30)
    response = desk.capture(whole, {"reason": "shipped"})
    assert response.status_code == 201, response.json
    transaction, hold = response.json["data"]["transaction"], response.json["data"]["hold"]
    assert (transaction["type"], transaction["amount"], transaction["reason"]) == (
        "capture",
        -30,
        "shipped",
    )
    assert (transaction["balance_before"], transaction["balance_after"]) == (100, 70)
    assert transaction["related_id"] == str(whole)
    assert (hold["id"], hold["status"], hold["captured"], hold["amount"]) == (
        whole,
        "captured",
        30,
        30,
    )
    assert TIMESTAMP.match(hold["closed_at"])
    assert response.json["data"]["account"]["frozen_balance"] == 0
    assert desk.totals() == (70, 0, 100, 30, 0)

    # A partial capture takes its amount and frees the rest of the hold.
    part = desk.placed(40)
    response = desk.capture(part, {"amount": 15})
    assert response.status_code == 201, response.json
    hold = response.json["data"]["hold"]
    assert (hold["status"], hold["captured"], hold["amount"]) == ("captured", 15, 40)
    assert response.json["data"]["transaction"]["amount"] == -15
    assert desk.totals() == (55, 0, 100, 45, 0)


def test_release_frees_the_held_points(desk: Desk, worker: None) -> None:
    desk.adjust(50)
    hold_id = desk.placed(20)
    response = desk.release(hold_id, {"reason": "cancelled"})
    assert response.status_code == 201, response.json
    transaction, hold = response.json["data"]["transaction"], response.json["data"]["hold"]
    assert (transaction["type"], transaction["amount"]) == ("release", 0)
    assert (transaction["balance_before"], transaction["balance_after"]) == (50, 50)
    assert (hold["status"], hold["captured"]) == ("released", 0)
    assert TIMESTAMP.match(hold["closed_at"])
    assert desk.totals() == (50, 0, 50, 0, 0)
    assert desk.read_hold(hold_id).json["data"]["status"] == "released"
    # A release takes no body at all, too.
    bare = desk.client.post(
        f"{desk.base}/holds/{desk.placed(5)}/release", headers=desk.caller.headers
    )
    assert bare.status_code == 201, bare.json
    assert desk.totals() == (50, 0, 50, 0, 0)


def test_a_closed_or_smaller_hold_refuses_capture_and_release(desk: Desk, worker: None) -> None:
    desk.adjust(100)
    hold_id = desk.placed(30)
    _refused(desk, desk.capture(hold_id, {"amount": 31}), Rejection.CAPTURE_EXCEEDS_HOLD)
    assert desk.read_hold(hold_id).json["data"]["status"] == "open"
    assert desk.totals() == (100, 30, 100, 0, 0)
    assert desk.capture(hold_id).status_code == 201
    _refused(desk, desk.capture(hold_id), Rejection.HOLD_NOT_OPEN)
    _refused(desk, desk.release(hold_id), Rejection.HOLD_NOT_OPEN)
    released = desk.placed(20)
    assert desk.release(released).status_code == 201
    _refused(desk, desk.release(released), Rejection.HOLD_NOT_OPEN)
    _refused(desk, desk.capture(released), Rejection.HOLD_NOT_OPEN)
    # A hold the worker rejected was never open.
    rejected = desk.hold({"amount": 1000})
    _refused(desk, rejected, Rejection.INSUFFICIENT_BALANCE)
    rejected_id = int(rejected.headers["Location"].rsplit("/", 1)[1])
    assert desk.read_hold(rejected_id).json["data"]["status"] == "rejected"
    _refused(desk, desk.capture(rejected_id), Rejection.HOLD_NOT_OPEN)
    assert desk.totals() == (70, 0, 100, 30, 0)


def test_capture_or_release_after_the_hold_timed_out_is_hold_expired(
    desk: Desk, worker: None
) -> None:
    desk.adjust(10)
    expires = datetime.now(UTC) + timedelta(seconds=1)
    hold_id = desk.placed(10, expires_at=expires.isoformat())
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    _refused(desk, desk.capture(hold_id), Rejection.HOLD_EXPIRED)
    _refused(desk, desk.release(hold_id), Rejection.HOLD_EXPIRED)
    # The refusals move nothing: the timeout task (beat's) is what releases the hold.
    assert desk.totals() == (10, 10, 10, 0, 0)


def test_hold_capture_and_release_replay_by_key(
    desk: Desk, worker: None, sessions: sessionmaker[Session]
) -> None:
    tenant = desk.caller.tenant_id
    desk.adjust(100)
    body = {"amount": 30, "idempotency_key": "hold-1"}
    first, again = desk.hold(body), desk.hold(body)
    assert first.status_code == 201
    _replayed(first, again)
    assert _requests_with_key(sessions, tenant, "hold-1") == 1
    assert desk.totals()[1] == 30
    conflict = desk.hold(body | {"amount": 31})
    assert conflict.status_code == 422 and conflict.json["code"] == 422
    assert [e["field"] for e in conflict.json["errors"]] == ["Idempotency-Key"]
    mismatch = desk.hold(body, **{"Idempotency-Key": "hold-other"})
    assert mismatch.status_code == 400
    assert [e["field"] for e in mismatch.json["errors"]] == ["idempotency_key"]

    # A replayed capture answers its 201 again, not hold_not_open.
    hold_id = first.json["data"]["hold"]["id"]
    key = {"Idempotency-Key": "capture-1"}
    first, again = (
        desk.capture(hold_id, {"amount": 10}, **key),
        desk.capture(hold_id, {"amount": 10}, **key),
    )
    assert first.status_code == 201, first.json
    _replayed(first, again)
    assert _requests_with_key(sessions, tenant, "capture-1") == 1
    assert desk.capture(hold_id, {"amount": 11}, **key).status_code == 422
    assert desk.capture(hold_id, {"amount": 10}, **key).status_code == 201

    # Retried after its timeout (say, its first answer was lost), a hold is a replay, not a
    # 400 for an expires_at now past; a new hold with a past timeout is that 400.
    soon = (datetime.now(UTC) + timedelta(seconds=0.6)).isoformat()
    timed = {"amount": 1, "expires_at": soon, "idempotency_key": "hold-timed"}
    first = desk.hold(timed)
    time.sleep(0.8)
    again = desk.hold(timed)
    assert again.status_code == first.status_code == 201, again.json
    assert again.headers.get("Idempotent-Replayed") == "true"
    late = desk.hold(timed | {"idempotency_key": "hold-late"})
    assert late.status_code == 400 and late.json["errors"][0]["field"] == "expires_at"
    expired = desk.release(first.json["data"]["hold"]["id"], {})
    assert expired.status_code == 409  # hold_expired: beat's timeout will release it

    released = desk.placed(5)
    body = {"idempotency_key": "release-1"}
    first, again = desk.release(released, body), desk.release(released, body)
    assert first.status_code == 201, first.json
    _replayed(first, again)
    assert _requests_with_key(sessions, tenant, "release-1") == 1
    assert desk.release(released, body | {"reason": "other"}).status_code == 422
    # The key names a release of this hold: releasing another hold with it is a conflict.
    assert desk.release(desk.placed(5), body).status_code == 422
    assert desk.totals() == (90, 6, 100, 10, 0)  # the timed-out hold of 1 is still held


def test_respond_async_hold_is_pending_then_open(
    desk: Desk, worker: None, sessions: sessionmaker[Session]
) -> None:
    account_id = desk.adjust(50)["account_id"]
    with sessions() as session:
        # The worker waits for this row lock: the answer cannot race it. (NO KEY UPDATE
        # still lets the API insert the request, as the worker's own lock does.)
        session.execute(
            text("SELECT id FROM accounts WHERE id = :id FOR NO KEY UPDATE"), {"id": account_id}
        )
        response = desk.hold({"amount": 20}, Prefer="respond-async")
        session.rollback()
    assert response.status_code == 202, response.json
    assert response.headers["Preference-Applied"] == "respond-async"
    assert (response.json["code"], response.json["message"]) == (0, "accepted")
    transaction, hold = response.json["data"]["transaction"], response.json["data"]["hold"]
    assert (transaction["status"], transaction["id"], transaction["type"]) == (
        "queued",
        None,
        "hold",
    )
    assert (hold["status"], hold["amount"], hold["captured"]) == ("pending", 20, 0)
    deadline = time.monotonic() + 5
    while (read := desk.read_hold(hold["id"]).json["data"])["status"] == "pending":
        assert time.monotonic() < deadline, "the hold was never applied"
        time.sleep(0.02)
    assert (read["status"], read["amount"], read["id"]) == ("open", 20, hold["id"])
    assert desk.totals() == (50, 20, 50, 0, 0)


def test_bad_hold_and_capture_bodies_name_the_field_and_write_nothing(
    desk: Desk, sessions: sessionmaker[Session]
) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    cases: list[tuple[str, Any, str]] = [
        ("holds", {"amount": 0}, "amount"),
        ("holds", {"amount": -5}, "amount"),
        ("holds", {}, "amount"),
        ("holds", {"reason": "no amount"}, "amount"),
        ("holds", {"amount": "ten"}, "amount"),
        ("holds", {"amount": 5, "expires_at": past}, "expires_at"),
        ("holds", {"amount": 5, "expires_at": "soon"}, "expires_at"),
        ("holds", {"amount": 5, "points_type": "gold"}, "points_type"),
        ("holds", {"amount": 5, "idempotency_key": 7}, "idempotency_key"),
        ("holds", [5], "body"),
        ("holds/1/capture", {"amount": 0}, "amount"),
        ("holds/1/capture", {"amount": -3}, "amount"),
        ("holds/1/release", {"idempotency_key": 7}, "idempotency_key"),
    ]
    for path, body, field in cases:
        response = desk.post(f"{desk.base}/{path}", body)
        assert response.status_code == 400, (path, body, response.json)
        assert response.json["code"] == 400
        assert [e["field"] for e in response.json["errors"]] == [field], (path, body)
    for path in ("holds", "holds/1/capture", "holds/1/release"):
        malformed = desk.client.post(
            f"{desk.base}/{path}",
            data='{"amount": 5',
            content_type="application/json",
            headers=desk.caller.headers,
        )
        assert malformed.status_code == 400, path
        assert [e["field"] for e in malformed.json["errors"]] == ["body"], path
    with sessions() as session:
        assert count_rows(session, desk.caller.tenant_id) == (0, 0)


def test_unknown_hold_or_another_users_hold_is_404(
    desk: Desk, factory: Factory, worker: None, sessions: sessionmaker[Session]
) -> None:
    desk.adjust(10)
    hold_id = desk.placed(5)
    adjust_id = int(
        desk.post(f"{desk.base}/adjust", {"amount": 1}).headers["Location"].rsplit("/", 1)[1]
    )
    other = Desk(desk.client, desk.caller, factory.user())
    with sessions() as session:
        before = count_rows(session, desk.caller.tenant_id)
    for owner, hold in ((desk, MISSING_ID), (desk, adjust_id), (other, hold_id)):
        for answer in (
            owner.read_hold(hold),
            owner.capture(hold),
            owner.release(hold),
        ):
            assert answer.status_code == 404, (hold, answer.json)
            assert answer.mimetype == "application/json" and answer.json["code"] == 404
    nobody = desk.client.get(
        f"/admin/points/usr_nobody/holds/{hold_id}", headers=desk.caller.headers
    )
    assert nobody.status_code == 404
    assert desk.post("/admin/points/usr_nobody/holds", {"amount": 1}).status_code == 404
    with sessions() as session:
        assert count_rows(session, desk.caller.tenant_id) == before
    assert desk.read_hold(hold_id).json["data"]["status"] == "open"


def test_hold_of_another_points_type_is_captured_from_its_own_account(
    desk: Desk, worker: None
) -> None:
    desk.adjust(20, points_type="cash_equivalent")
    desk.adjust(7)
    # Accepted before it is applied: the capture queues behind it on the same account.
    placed = desk.hold({"amount": 15, "points_type": "cash_equivalent"}, Prefer="respond-async")
    assert placed.status_code == 202, placed.json
    hold_id = placed.json["data"]["hold"]["id"]
    captured = desk.capture(hold_id, {"amount": 5})
    assert captured.status_code == 201, captured.json
    account = captured.json["data"]["account"]
    assert (account["points_type"], account["balance"], account["frozen_balance"]) == (
        "cash_equivalent",
        15,
        0,
    )
    assert captured.json["data"]["hold"]["status"] == "captured"
    assert desk.totals() == (7, 0, 7, 0, 0)
    # A key of an adjustment names another body: reused for a hold, it is a 422.
    desk.adjust(1, idempotency_key="adjust-key")
    assert desk.hold({"amount": 1, "idempotency_key": "adjust-key"}).status_code == 422
    too_much = desk.hold({"amount": 1_000_000_001})
    assert too_much.status_code == 400 and too_much.json["errors"][0]["field"] == "amount"


# --- reversals -------------------------------------------------------------------------


def test_reverse_writes_the_opposite_entry_once(
    desk: Desk, worker: None, sessions: sessionmaker[Session]
) -> None:
    earned = desk.adjust(40, reason="bonus")
    body = {"reason": "granted by mistake", "idempotency_key": "rev-1"}
    first = desk.reverse(earned["id"], body)
    assert first.status_code == 201, first.json
    transaction, account = first.json["data"]["transaction"], first.json["data"]["account"]
    assert ULID.match(transaction["id"]) and transaction["id"] != earned["id"]
    assert (transaction["type"], transaction["amount"], transaction["related_id"]) == (
        "reversal",
        -40,
        earned["id"],
    )
    assert (transaction["balance_before"], transaction["balance_after"]) == (40, 0)
    assert (transaction["status"], transaction["reason"], transaction["idempotency_key"]) == (
        "completed",
        "granted by mistake",
        "rev-1",
    )
    assert transaction["user_id"] == desk.user.external_id
    assert account["balance"] == 0
    assert desk.totals() == (0, 0, 40, 40, 0)

    _replayed(first, desk.reverse(earned["id"], body))
    assert _requests_with_key(sessions, desk.caller.tenant_id, "rev-1") == 1
    assert desk.reverse(earned["id"], body | {"reason": "other"}).status_code == 422
    # A second reversal (another key, or none) is refused when accepted: nothing recorded.
    for again in (body | {"idempotency_key": "rev-2"}, {}):
        refused = desk.reverse(earned["id"], again)
        assert refused.status_code == 409, refused.json
        assert refused.json["code"] == 409 and "reversed already" in refused.json["message"]
        assert refused.json["reason"] == "already_reversed"
        assert "Location" not in refused.headers
    with sessions() as session:
        assert count_rows(session, desk.caller.tenant_id) == (2, 2)
    page = desk.get(f"{desk.base}/transactions").json["data"]
    assert [(t["type"], t["amount"]) for t in page["items"]] == [("reversal", -40), ("adjust", 40)]


def test_reverse_refuses_holds_releases_and_reversals_but_undoes_a_capture(
    desk: Desk, worker: None, sessions: sessionmaker[Session]
) -> None:
    desk.adjust(100)
    hold = desk.hold({"amount": 30}).json["data"]
    release = desk.release(hold["hold"]["id"]).json["data"]["transaction"]
    captured = desk.placed(10)
    capture = desk.capture(captured).json["data"]["transaction"]
    assert desk.totals() == (90, 0, 100, 10, 0)
    undone = desk.reverse(capture["id"])
    assert undone.status_code == 201, undone.json
    reversal = undone.json["data"]["transaction"]
    assert (reversal["type"], reversal["amount"], reversal["related_id"]) == (
        "reversal",
        10,
        capture["id"],
    )
    assert desk.totals() == (100, 0, 110, 10, 0)
    with sessions() as session:
        before = count_rows(session, desk.caller.tenant_id)
    for ulid in (hold["transaction"]["id"], release["id"], reversal["id"]):
        refused = desk.reverse(ulid)
        assert refused.status_code == 409, refused.json
        assert refused.json["code"] == 409 and "cannot be reversed" in refused.json["message"]
    with sessions() as session:
        assert count_rows(session, desk.caller.tenant_id) == before


def test_reverse_below_zero_is_refused_unless_an_admin_forces_it(
    desk: Desk, moderator: Caller, factory: Factory, worker: None, sessions: sessionmaker[Session]
) -> None:
    earned = desk.adjust(50)
    desk.adjust(-30)
    as_moderator = Desk(desk.client, moderator, desk.user)
    _refused(desk, as_moderator.reverse(earned["id"]), Rejection.INSUFFICIENT_BALANCE)
    with sessions() as session:
        before = count_rows(session, desk.caller.tenant_id)
    forbidden = as_moderator.reverse(earned["id"], {"allow_negative_balance": True})
    assert forbidden.status_code == 403 and forbidden.json["code"] == 403
    with sessions() as session:
        assert count_rows(session, desk.caller.tenant_id) == before
    # The rejected reversal left the entry reversible: the admin's forced one applies.
    forced = desk.reverse(earned["id"], {"allow_negative_balance": True})
    assert forced.status_code == 201, forced.json
    assert forced.json["data"]["transaction"]["balance_after"] == -30
    assert desk.totals() == (-30, 0, 50, 80, 0)

    # Forced or not, a reversal never takes the balance below the points held.
    held = Desk(desk.client, desk.caller, factory.user())
    earned = held.adjust(100)
    hold_id = held.placed(80)
    _refused(
        held,
        held.reverse(earned["id"], {"allow_negative_balance": True}),
        Rejection.INSUFFICIENT_BALANCE,
    )
    assert held.release(hold_id).status_code == 201
    assert held.reverse(earned["id"]).status_code == 201
    assert held.totals() == (0, 0, 100, 100, 0)


def test_reverse_of_an_unknown_transaction_is_404_and_bad_input_400(
    desk: Desk, worker: None, sessions: sessionmaker[Session]
) -> None:
    missing = desk.reverse("01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert missing.status_code == 404 and missing.json["code"] == 404
    earned = desk.adjust(5)
    for body, field in (
        ({"allow_negative_balance": "yes"}, "allow_negative_balance"),
        ({"idempotency_key": 7}, "idempotency_key"),
        ({"reason": 7}, "reason"),
    ):
        response = desk.reverse(earned["id"], body)
        assert response.status_code == 400, (body, response.json)
        assert [e["field"] for e in response.json["errors"]] == [field], body
    with sessions() as session:
        assert count_rows(session, desk.caller.tenant_id) == (1, 1)


# --- POST /api/v2/score/{id}/reverse ----------------------------------------------------


def _score(client: FlaskClient, caller: Caller, user: User, amount: int) -> dict[str, Any]:
    response = client.post(
        "/api/v2/score/",
        json={"user_id": user.id, "score": amount, "comment": "given"},
        headers=caller.headers,
    )
    assert response.status_code == 201, response.json
    score: dict[str, Any] = response.json
    return score


def _reverse_score(
    client: FlaskClient, caller: Caller, score_id: int, key: str | None = None, **kwargs: Any
) -> TestResponse:
    headers = caller.headers | ({"Idempotency-Key": key} if key else {})
    return client.post(f"/api/v2/score/{score_id}/reverse", headers=headers, **kwargs)


def test_score_reverse_answers_a_reversal_score_once(
    client: FlaskClient,
    factory: Factory,
    moderator: Caller,
    worker: None,
    sessions: sessionmaker[Session],
) -> None:
    user = factory.user()
    given = _score(client, moderator, user, 7)
    first = _reverse_score(client, moderator, given["id"], "undo-1", json={"comment": "undo"})
    assert first.status_code == 201, first.json
    score = first.json
    assert score["id"] != given["id"]
    assert (score["score"], score["reputation_type"], score["reputation_type_description"]) == (
        -7,
        11,
        "reversal",
    )
    assert (score["user"]["id"], score["user"]["reputation"]) == (user.id, 0)
    assert score["comment"] == "undo" and score["created_by"]["id"] == moderator.user_id
    _replayed(
        first, _reverse_score(client, moderator, given["id"], "undo-1", json={"comment": "undo"})
    )
    assert _requests_with_key(sessions, factory.tenant_id, "undo-1") == 1
    conflict = _reverse_score(client, moderator, given["id"], "undo-1", json={"comment": "x"})
    assert conflict.status_code == 422 and conflict.mimetype == "application/problem+json"

    again = _reverse_score(client, moderator, given["id"], "undo-2")
    assert again.status_code == 409 and again.mimetype == "application/problem+json"
    assert again.json["code"] == "already_reversed"
    of_reversal = _reverse_score(client, moderator, score["id"])
    assert of_reversal.status_code == 409 and of_reversal.json["code"] == "not_reversible"
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (2, 2)

    # A form body, and no body at all, are accepted too.
    by_form = _reverse_score(
        client, moderator, _score(client, moderator, user, 3)["id"], data={"comment": "form"}
    )
    assert by_form.status_code == 201, by_form.json
    assert (by_form.json["score"], by_form.json["comment"]) == (-3, "form")
    bare = _reverse_score(client, moderator, _score(client, moderator, user, 2)["id"])
    assert bare.status_code == 201 and bare.json["user"]["reputation"] == 0

    missing = _reverse_score(client, moderator, MISSING_ID)
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    malformed = _reverse_score(
        client, moderator, given["id"], data="{", content_type="application/json"
    )
    assert malformed.status_code == 400
    assert [e["field"] for e in malformed.json["errors"]] == ["body"]


def test_score_reverse_below_zero_is_409_insufficient_balance(desk: Desk, worker: None) -> None:
    desk.adjust(10, idempotency_key="points-earned")
    desk.adjust(-10)
    earned = desk.get("/api/v2/score/requests", idempotency_key="points-earned").json["score"]
    refused = _reverse_score(desk.client, desk.caller, earned["id"], "undo-points")
    assert refused.status_code == 409 and refused.mimetype == "application/problem+json"
    assert refused.json["code"] == "insufficient_balance"
    status = desk.get("/api/v2/score/requests", idempotency_key="undo-points").json
    assert (status["status"], status["error"]["code"]) == ("rejected", "insufficient_balance")
    assert desk.totals() == (0, 0, 10, 10, 0)


# --- freeze and unfreeze ---------------------------------------------------------------


def test_frozen_account_rejects_and_keeps_requests_until_unfrozen(desk: Desk, worker: None) -> None:
    desk.adjust(10)
    hold_id = desk.placed(4)
    frozen = desk.post(f"{desk.base}/freeze")
    assert frozen.status_code == 200, frozen.json
    assert (frozen.json["code"], frozen.json["message"]) == (0, "frozen")
    account = frozen.json["data"]
    assert (account["status"], account["balance"], account["points_type"]) == (
        "frozen",
        10,
        "points",
    )
    again = desk.post(f"{desk.base}/freeze", {"points_type": "points"})
    assert again.status_code == 200 and again.json["data"]["status"] == "frozen"
    assert again.json["data"]["version"] == account["version"]

    rejected = desk.post(f"{desk.base}/adjust", {"amount": 5, "idempotency_key": "while-frozen"})
    _refused(desk, rejected, Rejection.ACCOUNT_FROZEN)
    by_key = desk.get("/api/v2/score/requests", idempotency_key="while-frozen").json
    assert (by_key["status"], by_key["error"]["code"]) == ("rejected", "account_frozen")
    _refused(desk, desk.hold({"amount": 1}), Rejection.ACCOUNT_FROZEN)
    _refused(desk, desk.capture(hold_id), Rejection.ACCOUNT_FROZEN)
    _refused(
        desk,
        desk.reverse(desk.get(f"{desk.base}/transactions").json["data"]["items"][-1]["id"]),
        Rejection.ACCOUNT_FROZEN,
    )
    assert desk.totals() == (10, 4, 10, 0, 0)

    unfrozen = desk.post(f"{desk.base}/unfreeze")
    assert unfrozen.status_code == 200 and unfrozen.json["data"]["status"] == "active"
    assert desk.post(f"{desk.base}/unfreeze").json["data"]["status"] == "active"
    desk.adjust(5, idempotency_key="after-unfreeze")
    assert desk.capture(hold_id).status_code == 201
    assert desk.totals() == (11, 0, 15, 4, 0)
    # Unfreezing replayed none of the rejected requests, and a retry of one stays refused.
    by_key = desk.get("/api/v2/score/requests", idempotency_key="while-frozen").json
    assert (by_key["status"], by_key["error"]["code"]) == ("rejected", "account_frozen")
    _refused(
        desk,
        desk.post(f"{desk.base}/adjust", {"amount": 5, "idempotency_key": "while-frozen"}),
        Rejection.ACCOUNT_FROZEN,
    )
    assert desk.totals() == (11, 0, 15, 4, 0)


def test_freezing_another_points_type_rejects_community_scores(
    desk: Desk, moderator: Caller, worker: None
) -> None:
    assert desk.post(f"{desk.base}/freeze", {"points_type": "reputation"}).status_code == 200
    refused = desk.client.post(
        "/api/v2/score/",
        json={"user_id": desk.user.id, "score": 1, "comment": "hi"},
        headers=moderator.headers,
    )
    assert refused.status_code == 409 and refused.json["code"] == "account_frozen"
    # Its points account is another account, still active.
    assert desk.adjust(3)["balance_after"] == 3
    assert desk.account()["status"] == "active"


def test_freeze_and_unfreeze_are_for_admins(desk: Desk, moderator: Caller, worker: None) -> None:
    desk.adjust(1)
    as_moderator = Desk(desk.client, moderator, desk.user)
    for action in ("freeze", "unfreeze"):
        refused = as_moderator.post(f"{desk.base}/{action}")
        assert refused.status_code == 403 and refused.json["code"] == 403
    assert desk.account()["status"] == "active"
    assert desk.post(f"{desk.base}/freeze").status_code == 200
    assert as_moderator.post(f"{desk.base}/unfreeze").status_code == 403
    assert desk.account()["status"] == "frozen"
    bad = desk.post(f"{desk.base}/freeze", {"points_type": "gold"})
    assert bad.status_code == 400
    assert [e["field"] for e in bad.json["errors"]] == ["points_type"]
    assert desk.post("/admin/points/usr_nobody/freeze").status_code == 404
