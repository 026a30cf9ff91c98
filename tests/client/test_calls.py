"""tally_client.Client against a real stack: answers, statuses, typed errors, bulk batches."""

from __future__ import annotations

import secrets

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from tally_client import (
    BatchStatus,
    Client,
    KeyReused,
    NotFound,
    Rejected,
    TallyError,
    Unauthorized,
    ValidationError,
)

from shared.models import Account, Role, User
from tests.factories import Factory, count_rows
from tests.stack import Stack

pytestmark = pytest.mark.processes


def _freeze(sessions: sessionmaker[Session], user: User) -> None:
    with sessions.begin() as session:
        session.execute(update(Account).where(Account.user_id == user.id).values(status="frozen"))


def test_adjust_answers_completed_or_queued_and_status_finds_it_by_key(
    stack: Stack, stack_factory: Factory
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    with Client(stack.base_url, caller.token) as tally:
        # The workers may still be starting: wait for them as long as the server allows.
        applied = tally.adjust(
            user.username, 10, reputation_context="contest|first_place|apis", comment="winner",
            wait=30,
        )  # fmt: skip
        assert applied.status == "completed" and applied.completed and not applied.replayed
        assert applied.body["score"] == 10 and applied.body["user"]["reputation"] == 10
        assert applied.status_url == f"{stack.base_url}/api/v2/score/requests/{applied.request_id}"

        again = tally.adjust(
            user.username, 10, reputation_context="contest|first_place|apis", comment="winner",
            idempotency_key=applied.idempotency_key,
        )  # fmt: skip
        assert again.replayed and again.request_id == applied.request_id
        assert again.body == applied.body

        queued = tally.adjust(user.id, -3, comment="typo", idempotency_key="fix-" + user.username,
                              wait=0)  # fmt: skip
        assert queued.status == "queued" and queued.body["status"] in ("queued", "processing")
        final = tally.wait(queued, timeout=30)
        assert final.status == "completed" and final.id == queued.request_id
        assert final.score is not None and final.score["user"]["reputation"] == 7

        by_key = tally.status(idempotency_key="fix-" + user.username)
        assert by_key.id == queued.request_id and by_key.status == "completed"
        assert tally.status(queued.request_id).score == final.score
    assert tally.endpoint.token not in repr(tally.endpoint)


def test_points_adjust_answers_in_the_envelope_and_a_rejection_has_its_reason(
    stack: Stack, stack_factory: Factory
) -> None:
    caller = stack_factory.caller(Role.ADMIN)
    user = stack_factory.user(external_id="ext-" + secrets.token_hex(4))
    with Client(stack.base_url, caller.token) as tally:
        earned = tally.points_adjust(user.external_id or "", 5, reason="check-in")
        assert earned.completed
        assert earned.body["code"] == 0
        assert earned.body["data"]["account"]["balance"] == 5
        assert earned.body["data"]["transaction"]["idempotency_key"] == earned.idempotency_key

        # `points` may not go negative: the worker refuses, the API answers 409.
        with pytest.raises(Rejected) as refused:
            tally.points_adjust(user.id, -8, reason="too much")
        assert refused.value.status == 409
        assert refused.value.reason == "insufficient_balance"
        assert refused.value.request_id is not None
        assert tally.status(refused.value.request_id).error_code == "insufficient_balance"

        allowed = tally.points_adjust(user.id, -8, reason="debt", allow_negative_balance=True)
        assert allowed.body["data"]["account"]["balance"] == -3


def test_holds_captures_releases_and_reversals(stack: Stack, stack_factory: Factory) -> None:
    caller = stack_factory.caller(Role.ADMIN)
    user = stack_factory.user(external_id="ext-" + secrets.token_hex(4))
    with Client(stack.base_url, caller.token) as tally:
        earned = tally.points_adjust(user.id, 100, reason="sign-up", wait=30)
        held = tally.hold(user.id, 60, reason="order 1", expires_at="2100-01-01T00:00:00Z")
        hold = held.body["data"]["hold"]
        assert (hold["status"], hold["amount"]) == ("open", 60)
        assert held.body["data"]["account"]["frozen_balance"] == 60
        with pytest.raises(Rejected) as refused:  # 40 spendable
            tally.hold(user.id, 50)
        assert refused.value.reason == "insufficient_balance"

        captured = tally.capture(user.id, hold["id"], 25)
        assert captured.body["data"]["hold"]["captured"] == 25
        assert captured.body["data"]["account"]["balance"] == 75
        assert captured.body["data"]["account"]["frozen_balance"] == 0
        with pytest.raises(Rejected) as closed:
            tally.release(user.id, hold["id"])
        assert closed.value.reason == "hold_not_open"
        second = tally.hold(user.id, 10)
        released = tally.release(user.id, second.body["data"]["hold"]["id"])
        assert released.body["data"]["hold"]["status"] == "released"

        transaction = earned.body["data"]["transaction"]["id"]
        with pytest.raises(Rejected):  # 100 would take the balance of 75 below zero
            tally.reverse(transaction)
        reversed_ = tally.reverse(transaction, allow_negative_balance=True, reason="fraud")
        entry = reversed_.body["data"]["transaction"]
        assert (entry["type"], entry["amount"], entry["related_id"]) == (
            "reversal",
            -100,
            transaction,
        )
        with pytest.raises(Rejected) as again:
            tally.reverse(transaction, reason="again")
        assert again.value.reason == "already_reversed"  # issue 20: it was None

        scored = tally.adjust(user.username, 4, comment="typo", wait=30)
        undone = tally.reverse_score(scored.body["id"], comment="undo")
        assert (undone.body["score"], undone.body["reputation_type"]) == (-4, 11)
        assert tally.reverse_score(scored.body["id"], comment="undo",
                                   idempotency_key=undone.idempotency_key).replayed  # fmt: skip
        with pytest.raises(Rejected) as twice:
            tally.reverse_score(scored.body["id"], comment="undo")
        assert twice.value.reason == "already_reversed"


def test_error_answers_raise_one_exception_type_per_problem_and_are_not_retried(
    stack: Stack, stack_factory: Factory, stack_sessions: sessionmaker[Session]
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    tries: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [tries.append]})
    with http, Client(stack.base_url, caller.token, http=http) as tally:
        with pytest.raises(ValidationError) as invalid:
            tally.adjust(user.username, 0, comment="nothing")
        assert invalid.value.status == 400 and invalid.value.slug == "validation"
        assert [e.field for e in invalid.value.errors] == ["score"]
        assert len(tries) == 1  # a 4xx is final
        # Issue 24: str() names the fields at fault and the id the server logged it under.
        request_id = invalid.value.x_request_id
        assert request_id and len(request_id) == 32
        assert str(invalid.value) == (
            "400: the request has invalid fields (score: must not be 0)"
            f" [X-Request-ID {request_id}]"
        )

        with pytest.raises(NotFound):
            tally.status(987654321)
        with pytest.raises(NotFound):
            tally.status(idempotency_key="never-used")

        tally.adjust(user.id, 4, comment="first", idempotency_key="k-" + user.username)
        with pytest.raises(KeyReused) as reused:
            tally.adjust(user.id, 5, comment="first", idempotency_key="k-" + user.username)
        assert reused.value.status == 422 and not isinstance(reused.value, Rejected)

        _freeze(stack_sessions, user)
        with pytest.raises(Rejected) as frozen:
            tally.adjust(user.id, 1, comment="after the freeze")
        assert frozen.value.reason == "account_frozen"
        assert frozen.value.detail == "the account is frozen"
    with stack_sessions() as session:
        assert count_rows(session, stack_factory.tenant_id) == (2, 1)

    with Client(stack.base_url, "tly_not-a-token") as stranger, pytest.raises(Unauthorized) as no:
        stranger.adjust(user.id, 1, comment="who am I")
    assert no.value.status == 401 and isinstance(no.value, TallyError)


def test_bulk_follows_the_batch_to_the_end_and_lists_its_rejected_items(
    stack: Stack, stack_factory: Factory, stack_sessions: sessionmaker[Session]
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    users = [stack_factory.user() for _ in range(3)]
    with Client(stack.base_url, caller.token) as tally:
        tally.adjust(users[0].id, 1, comment="opens the account")
        _freeze(stack_sessions, users[0])
        items = [{"username": u.username, "score": 5 + n} for n, u in enumerate(users)]

        with pytest.raises(ValidationError) as invalid:
            tally.bulk([*items, {"username": users[1].username, "score": "1e3"}], comment="x")
        assert [(e.position, e.field) for e in invalid.value.errors] == [(3, "score")]

        accepted = tally.bulk(items, reputation_context="contest|bulk", comment="prize")
        assert accepted.total == 3 and not accepted.replayed
        seen: list[BatchStatus] = []
        final = tally.follow_batch(accepted, timeout=60, poll=0.2, on_progress=seen.append)
        assert final.status == "completed_with_rejections"
        assert final.counts["completed"] == 2 and final.counts["rejected"] == 1
        assert seen[-1] == final and all(s.id == accepted.id for s in seen)

        rejected = list(tally.batch_items(final, status="rejected"))
        assert [(r.error_code, r.score) for r in rejected] == [("account_frozen", None)]
        assert len(list(tally.batch_items(final.id))) == 3
    with stack_sessions() as session:
        assert count_rows(session, stack_factory.tenant_id) == (4, 3)
