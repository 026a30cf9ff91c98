"""The event log: each type written with its change through the real routes and worker,
rolled back with it, append-only, kept for its retention, and the notices tally writes.

The points model test (tests/shared/test_points_model.py) checks the account events of
every interleaving of points operations against the reference model; these tests show
each type once, with its payload, and what the model does not reach (batches, freezes
through the route, notices, the database's refusals).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import sqlalchemy.exc
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared.events.log import (
    DELIVERY_LOCK,
    EVENT_TYPES,
    FAN_OUT_LOCK,
    SEQUENCER_LOCK,
    STREAM_LOCK,
    number_events,
    prune_events,
    read_events,
    write_events,
)
from shared.events.notices import crossings, note_crossings, thresholded, warn_expiring_lots
from shared.intake.adjustments import Adjustment
from shared.models import Role, new_ulid
from shared.platform.config import PointsType
from shared.platform.db import transaction
from tests.api.test_points_operations import Desk
from tests.factories import Caller, Factory, queue_adjustments, queue_requests
from worker.app import TallyCelery
from worker.pump import pump_events


@pytest.fixture
def admin(factory: Factory) -> Caller:
    return factory.caller(Role.ADMIN)


@pytest.fixture
def desk(client: FlaskClient, factory: Factory, admin: Caller) -> Desk:
    return Desk(client, admin, factory.user(external_id="ext_" + factory.tenant_id))


def events_of(sessions: sessionmaker[Session], tenant_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Number what is committed; the tenant's events as (type, data), in id order."""
    with transaction(sessions) as session:
        number_events(session)
    with sessions() as session:
        return [(e.type, e.payload) for e in read_events(session, tenant_id, 0, 10_000)]


def types_of(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [kind for kind, _ in events]


def test_an_applied_adjustment_is_accepted_then_an_entry_then_applied(
    desk: Desk, sessions: sessionmaker[Session], worker: None
) -> None:
    transaction_ = desk.adjust(40, idempotency_key="first", reason="welcome")
    events = events_of(sessions, desk.caller.tenant_id)
    assert types_of(events) == ["request.accepted", "entry.created", "request.applied"]
    accepted, entry, applied = (data for _, data in events)
    assert accepted["idempotency_key"] == "first" and accepted["amount"] == 40
    assert accepted["user_id"] == desk.user.external_id
    assert accepted["points_type"] == "points" and accepted["operation"] == "adjust"
    assert entry["entry_ulid"] == transaction_["id"]
    assert (entry["amount"], entry["balance_before"], entry["balance_after"]) == (40, 0, 40)
    assert entry["reason"] == "welcome"
    assert applied["request_id"] == accepted["request_id"] == entry["request_id"]
    assert applied["entry_id"] == entry["entry_id"]


def documented_fields(kind: str) -> set[str]:
    """The top-level fields docs/events.md gives `kind`'s data: its row of the types'
    table, and `user_id` and `points_type`, which every account event carries."""
    document = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    [row] = [line for line in document.splitlines() if line.startswith(f"| `{kind}` |")]
    data = re.sub(r"\([^)]*\)", "", row.split(" | ")[2])  # no nested fields, no notes
    return set(re.findall(r"`(\w+)`", data)) | {"user_id", "points_type"}


def test_a_request_and_its_entry_carry_the_documented_fields(
    desk: Desk, sessions: sessionmaker[Session], worker: None
) -> None:
    desk.adjust(40, idempotency_key="given")
    assert desk.post(f"{desk.base}/adjust", {"amount": -50}).status_code == 409
    events = events_of(sessions, desk.caller.tenant_id)
    assert sorted({kind for kind, _ in events}) == [
        "entry.created", "request.accepted", "request.applied", "request.rejected"
    ]  # fmt: skip
    for kind, data in events:
        assert set(data) == documented_fields(kind), kind


def test_a_rejected_request_says_why(
    desk: Desk, sessions: sessionmaker[Session], worker: None
) -> None:
    response = desk.post(f"{desk.base}/adjust", {"amount": -5})
    assert response.status_code == 409, response.json
    events = events_of(sessions, desk.caller.tenant_id)
    assert types_of(events) == ["request.accepted", "request.rejected"]
    rejected = events[1][1]
    assert rejected["error"]["code"] == response.json["reason"]
    assert rejected["error"]["message"] == response.json["message"]


def test_holds_opened_captured_released_and_accounts_frozen_and_unfrozen(
    desk: Desk, sessions: sessionmaker[Session], worker: None
) -> None:
    desk.adjust(100)
    captured = desk.placed(30)
    released = desk.placed(20)
    assert desk.capture(captured, {"amount": 10}).status_code == 201
    assert desk.release(released).status_code == 201
    assert desk.post(f"{desk.base}/freeze").status_code == 200
    assert desk.post(f"{desk.base}/freeze").status_code == 200  # no change: no event
    assert desk.post(f"{desk.base}/unfreeze").status_code == 200
    events = events_of(sessions, desk.caller.tenant_id)
    holds = [(kind, data) for kind, data in events if kind.startswith("hold.")]
    assert holds == [
        ("hold.opened", {"hold_id": captured, "amount": 30, "expires_at": None}),
        ("hold.opened", {"hold_id": released, "amount": 20, "expires_at": None}),
        ("hold.captured", {"hold_id": captured, "amount": 30, "captured": 10,
                           "closed_by": holds[2][1]["closed_by"]}),
        ("hold.released", {"hold_id": released, "amount": 20, "captured": 0,
                           "closed_by": holds[3][1]["closed_by"]}),
    ]  # fmt: skip
    statuses = [(kind, data["balance"]) for kind, data in events if kind.startswith("account.")]
    assert statuses == [("account.frozen", 90), ("account.unfrozen", 90)]


def test_a_lot_expiring_then_expired(
    desk: Desk, sessions: sessionmaker[Session], celery_app: TallyCelery, worker: None
) -> None:
    desk.adjust(25, expires_at="2030-01-01T00:00:00Z")
    with transaction(sessions) as session:
        session.execute(
            text("UPDATE lots SET expires_at = now() + interval '2 days' WHERE tenant_id = :t"),
            {"t": desk.caller.tenant_id},
        )
    types = {"points": PointsType("points", False, 100, expiry_warning_days=3)}
    for _ in range(2):  # once per lot
        with transaction(sessions) as session:
            warn_expiring_lots(session, types, 100)
    with transaction(sessions) as session:
        session.execute(
            text("UPDATE lots SET expires_at = now() - interval '1 second' WHERE tenant_id = :t"),
            {"t": desk.caller.tenant_id},
        )
    celery_app.send_task("tally.expire_lots")  # the worker fixture runs it and the expiry
    events = _wait_for(sessions, desk.caller.tenant_id, "lot.expired")
    expiring = [data for kind, data in events if kind == "lot.expiring"]
    expired = [data for kind, data in events if kind == "lot.expired"]
    assert len(expiring) == 1 and expiring[0]["remaining"] == 25
    assert expiring[0]["days_before"] == 3 and expiring[0]["user_id"] == desk.user.external_id
    assert len(expired) == 1 and expired[0]["expired"] == 25
    assert expired[0]["lot_id"] == expiring[0]["lot_id"]


def _wait_for(
    sessions: sessionmaker[Session], tenant_id: str, kind: str
) -> list[tuple[str, dict[str, Any]]]:
    deadline = time.monotonic() + 20
    while True:
        events = events_of(sessions, tenant_id)
        if kind in types_of(events):
            return events
        assert time.monotonic() < deadline, types_of(events)
        time.sleep(0.1)


def test_a_batch_is_accepted_then_completed_with_its_counts(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions, worker: None
) -> None:
    users = [factory.user() for _ in range(3)]
    response = client.post(
        "/api/v2/score/bulk",
        json={"items": [{"user_id": u.id, "score": 2} for u in users],
              "reputation_context": "contest|bulk", "comment": "prize"},
        headers=moderator.headers | {"Idempotency-Key": "batch-events"},
    )  # fmt: skip
    assert response.status_code == 202, response.json
    events = _wait_for(sessions, factory.tenant_id, "batch.completed")
    kinds = types_of(events)
    assert kinds[0] == "batch.accepted" and kinds[-1] == "batch.completed"
    assert "request.accepted" not in kinds  # a batch's items are accepted as one
    assert kinds.count("entry.created") == kinds.count("request.applied") == 3
    accepted, completed = events[0][1], events[-1][1]
    assert response.headers["Location"].endswith(accepted["batch_id"])
    assert (accepted["idempotency_key"], accepted["total"]) == ("batch-events", 3)
    assert completed["batch_id"] == accepted["batch_id"]
    assert (completed["total"], completed["completed"], completed["rejected"]) == (3, 3, 0)


def test_a_failed_apply_leaves_no_event_and_the_retry_writes_them_once(
    factory: Factory, moderator: Caller, sessions: sessionmaker[Session], apply_account
) -> None:
    user = factory.user()
    account, _ = queue_requests(sessions, moderator, user.id, [5, 7])
    failing = mock.patch("shared.ledger.apply._write_holds", side_effect=RuntimeError("disk"))
    with failing, pytest.raises(RuntimeError):
        apply_account(account)
    assert types_of(events_of(sessions, factory.tenant_id)) == ["request.accepted"] * 2
    assert apply_account(account) == 2
    assert types_of(events_of(sessions, factory.tenant_id)) == (
        ["request.accepted"] * 2 + ["entry.created"] * 2 + ["request.applied"] * 2
    )


def test_a_chunk_writes_its_entries_then_the_applied_then_the_rejected_each_in_order(
    factory: Factory, moderator: Caller, sessions: sessionmaker[Session], apply_account
) -> None:
    user = factory.user()
    amounts = [5, -20, 7, -30, 1]  # "points" may not go below zero: -20 and -30 are refused
    adjustments = [Adjustment(user.id, "points", amount, comment="chunk") for amount in amounts]
    [account] = queue_adjustments(sessions, moderator, adjustments)
    assert apply_account(account) == 5  # decided: three applied, two rejected
    events = events_of(sessions, factory.tenant_id)
    accepted = [data["request_id"] for _, data in events[:5]]
    assert types_of(events[:5]) == ["request.accepted"] * 5 and accepted == sorted(accepted)
    entries, outcomes = events[5:8], events[8:]
    assert types_of(entries) == ["entry.created"] * 3
    assert [data["amount"] for _, data in entries] == [5, 7, 1]
    assert [data["balance_after"] for _, data in entries] == [5, 12, 13]
    # The applied ones are written with the entries' statement, the rejected after it.
    assert types_of(outcomes) == ["request.applied"] * 3 + ["request.rejected"] * 2
    in_order = [accepted[0], accepted[2], accepted[4], accepted[1], accepted[3]]
    assert [data["request_id"] for _, data in outcomes] == in_order
    applied = [data for kind, data in outcomes if kind == "request.applied"]
    for (_, entry), outcome in zip(entries, applied, strict=True):
        assert outcome["entry_id"] == entry["entry_id"] and outcome["cut"] == 0
    rejected = [data for kind, data in outcomes if kind == "request.rejected"]
    assert [data["amount"] for data in rejected] == [-20, -30]
    assert {data["error"]["code"] for data in rejected} == {"insufficient_balance"}


def test_ids_and_account_sequences_are_numbered_after_commit_without_gaps(
    factory: Factory, moderator: Caller, sessions: sessionmaker[Session], apply_account
) -> None:
    users = [factory.user() for _ in range(3)]
    for user in users:
        account, _ = queue_requests(sessions, moderator, user.id, [1, 2])
        apply_account(account)
    with sessions() as session:
        unnumbered = session.scalar(
            text("SELECT count(*) FROM events WHERE tenant_id = :t AND id IS NULL"),
            {"t": factory.tenant_id},
        )
    assert unnumbered == 18  # written by the triggers, numbered by the sequencer
    events_of(sessions, factory.tenant_id)
    with sessions() as session:
        events = read_events(session, factory.tenant_id, 0, 100)
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 18
    by_account: dict[str | None, list[int | None]] = {}
    for event in events:
        by_account.setdefault(event.account_id, []).append(event.account_seq)
    assert sorted(by_account.values()) == [[1, 2, 3, 4, 5, 6]] * 3


def test_a_pass_numbers_a_backlog_with_gaps_in_write_order_a_few_positions_at_a_time(
    factory: Factory, sessions: sessionmaker[Session]
) -> None:
    # Write positions (seq) that a rolled-back transaction took are gaps; a statement
    # takes the unnumbered events of NUMBER_PER_STATEMENT positions from the first one.
    account = new_ulid()
    written = 0
    for batch in range(6):
        session = sessions()
        write_events(session, [(factory.tenant_id, account, "lot.expiring", {"n": written + i})
                               for i in range(3)])  # fmt: skip
        if batch % 2:
            session.rollback()  # three positions taken, no event
        else:
            session.commit()
            written += 3
        session.close()
    with mock.patch("shared.events.log.NUMBER_PER_STATEMENT", 2):
        with transaction(sessions) as session:
            numbered = number_events(session)
        assert numbered.count == written == 9
    with sessions() as session:
        events = read_events(session, factory.tenant_id, 0, 100)
    assert [e.payload["n"] for e in events] == list(range(9))
    assert [e.account_seq for e in events] == list(range(1, 10))
    assert [e.id for e in events] == list(range(events[0].id, events[0].id + 9))


@pytest.fixture
def one_event(factory: Factory, moderator: Caller, sessions: sessionmaker[Session]) -> int:
    queue_requests(sessions, moderator, factory.user().id, [1])
    events_of(sessions, factory.tenant_id)
    with sessions() as session:
        event_id: int = session.scalar(
            text("SELECT id FROM events WHERE tenant_id = :t"), {"t": factory.tenant_id}
        )
    return event_id


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET payload = '{}' WHERE id = :id",
        "UPDATE events SET id = id + 1000000 WHERE id = :id",
        "UPDATE events SET type = 'entry.created' WHERE id = :id",
        "DELETE FROM events WHERE id = :id",
        "TRUNCATE events",
    ],
)
def test_the_database_refuses_to_change_an_event(
    one_event: int, sessions: sessionmaker[Session], statement: str
) -> None:
    refused = pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only")
    with refused, transaction(sessions) as session:
        session.execute(text(statement), {"id": one_event})


def test_retention_deletes_only_old_events(
    one_event: int, factory: Factory, sessions: sessionmaker[Session]
) -> None:
    with transaction(sessions) as session:
        assert prune_events(session, 1) == 0
    with transaction(sessions) as session:
        # Backdate through the retention door (the only way past the trigger), as a test.
        session.execute(text("SET LOCAL tally.events_retention = 'on'"))
        row = session.execute(
            text("DELETE FROM events WHERE id = :id RETURNING tenant_id, account_id, type,"
                 " payload, account_seq"), {"id": one_event},
        ).one()  # fmt: skip
        session.execute(
            text("INSERT INTO events (tenant_id, account_id, type, payload, occurred_at)"
                 " VALUES (:t, :a, :type, CAST(:p AS jsonb), now() - interval '3 days')"),
            {"t": row.tenant_id, "a": row.account_id, "type": row.type,
             "p": json.dumps(row.payload)},
        )  # fmt: skip
    events_of(sessions, factory.tenant_id)
    with transaction(sessions) as session:
        assert prune_events(session, 2) >= 1
    assert events_of(sessions, factory.tenant_id) == []


def test_an_analyze_of_the_log_leaves_the_payloads_out(
    one_event: int, sessions: sessionmaker[Session]
) -> None:
    """No plan reads statistics of what payloads hold, and computing them was most of
    the log's ANALYZE (migration 0018): its other columns get theirs."""
    with transaction(sessions) as session:
        session.execute(text("ANALYZE events"))
    with sessions() as session:
        analyzed = set(
            session.scalars(text("SELECT attname FROM pg_stats WHERE tablename = 'events'"))
        )
    assert {"type", "tenant_id", "account_id"} <= analyzed
    assert "payload" not in analyzed


def test_crossings_are_edges_not_levels() -> None:
    assert crossings(0, 100, [100, 500]) == [(100, "up")]
    assert crossings(100, 150, [100, 500]) == []  # still above: nothing
    assert crossings(150, 99, [100, 500]) == [(100, "down")]
    assert crossings(0, 600, [100, 500]) == [(100, "up"), (500, "up")]
    assert crossings(600, 600, [100]) == []


def test_balance_crossings_are_written_once_per_crossing_by_the_pump(
    desk: Desk, sessions: sessionmaker[Session], celery_app: TallyCelery, worker: None
) -> None:
    types = {"points": PointsType("points", False, 100, balance_thresholds=(50,))}
    for amount in (30, 30, 10, -40, 30):  # 30, 60 (up), 70, 30 (down), 60 (up)
        desk.adjust(amount) if amount > 0 else desk.post(f"{desk.base}/adjust", {"amount": amount})
    with transaction(sessions) as session:
        numbered = number_events(session, thresholded(types))
        note_crossings(session, types, numbered.entries)
    assert [payload["balance_after"] for *_, payload in numbered.entries] == [30, 60, 70, 30, 60]
    desk.adjust(5)
    with transaction(sessions) as session:  # no points type followed: no payload read back
        assert number_events(session, thresholded({})).entries == []
    crossed = [data for kind, data in events_of(sessions, desk.caller.tenant_id)
               if kind == "balance.crossed"]  # fmt: skip
    assert [(c["direction"], c["balance_before"], c["balance_after"]) for c in crossed] == [
        ("up", 30, 60),
        ("down", 70, 30),
        ("up", 30, 60),
    ]
    assert all(c["threshold"] == 50 and c["points_type"] == "points" for c in crossed)


def test_the_pump_numbers_and_wakes_the_feed(
    factory: Factory, moderator: Caller, sessions: sessionmaker[Session], celery_app: TallyCelery
) -> None:
    redis: Redis = celery_app.resources.redis
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(celery_app.resources.keys.events_channel)
    try:
        queue_requests(sessions, moderator, factory.user().id, [3])
        assert pump_events(celery_app) >= 1
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
        assert message is not None and factory.tenant_id in json.loads(message["data"])
    finally:
        pubsub.close()
    with sessions() as session:
        assert [e.type for e in read_events(session, factory.tenant_id, 0, 10)] == [
            "request.accepted"
        ]


def test_each_job_of_the_event_log_has_its_own_advisory_lock() -> None:
    # The fan-out and the NATS stream once shared a key: a stream run waiting on NATS
    # held the pump's fan-out up, and a fan-out made the stream skip its run.
    keys = [SEQUENCER_LOCK, FAN_OUT_LOCK, DELIVERY_LOCK, STREAM_LOCK]
    assert len(set(keys)) == len(keys)


def test_every_type_is_documented() -> None:
    document = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    assert [kind for kind in EVENT_TYPES if f"`{kind}`" not in document] == []
