"""Webhooks: signed deliveries a real receiver verifies, rotation, order per account through
retries, the retry window and redelivery, auto-disable, refused addresses, the admin routes
and the CLI."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as LibraryRefused
from tally_client import WebhookVerificationError, verify_webhook

from cli.main import cli
from shared.events import webhook_sender
from shared.events.log import DELIVERY_LOCK, Event, number_events, write_events
from shared.events.webhook_sender import (
    ANSWER_READ_MAX,
    DISABLED_EVENT,
    ERROR_MAX,
    Attempt,
    Head,
    Run,
    WebhookSender,
    backoff_delay,
    due_queues,
    record_attempts,
)
from shared.events.webhooks import (
    delivery_finished,
    endpoints_due,
    fan_out,
    prune_deliveries,
    queue_deliveries,
    url_refusal,
)
from shared.models import Role, WebhookDelivery, WebhookEndpoint, new_ulid
from shared.platform.config import Settings
from shared.platform.db import transaction
from tests.conftest import Services
from tests.events.receiver import Receiver, always
from tests.factories import Caller, Factory, reputation
from worker import tasks as worker_tasks
from worker.app import DELIVER_WEBHOOKS_TASK, TallyCelery

# Fast retries: the backoff runs in tenths of a second.
FAST = {
    "webhook_allow_private": True,
    "webhook_backoff_base": 0.1,
    "webhook_backoff_cap": 0.4,
    "webhook_timeout": 1.0,
}
HOOKS = "/api/v2/webhooks/"
# An endpoint's secrets, for the tests that call `send_round` directly.
SECRETS = ["whsec_" + "A" * 32]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def admin(factory: Factory) -> Caller:
    return factory.caller(Role.ADMIN)


@pytest.fixture
def hooks_app(app_with: Callable[..., Flask]) -> Flask:
    """The API with loopback receivers allowed (the suite's receivers are on 127.0.0.1)."""
    return app_with(webhook_allow_private=True)


@pytest.fixture
def hooks(hooks_app: Flask) -> FlaskClient:
    return hooks_app.test_client()


@pytest.fixture
def sender_with(
    celery_app: TallyCelery, base_settings: Settings
) -> Iterator[Callable[..., WebhookSender]]:
    """Webhook senders on the suite's database, with FAST settings plus any overrides."""
    made: list[WebhookSender] = []

    def build(**overrides: Any) -> WebhookSender:
        settings = base_settings.with_overrides(FAST | overrides)
        resources = celery_app.resources
        sender = WebhookSender(settings, resources.engine, resources.sessions)
        made.append(sender)
        return sender

    yield build
    for sender in made:
        sender.close()


def add_endpoint(client: FlaskClient, admin: Caller, url: str, **fields: Any) -> dict[str, Any]:
    answer = client.post(HOOKS, json={"url": url, **fields}, headers=admin.headers)
    assert answer.status_code == 201, answer.json
    document: dict[str, Any] = answer.json  # type: ignore[assignment]
    return document


def pump(sessions: sessionmaker[Session]) -> None:
    """What beat's pump does for webhooks: number new events, write their deliveries."""
    with transaction(sessions) as session:
        number_events(session)
    with transaction(sessions) as session:
        fan_out(session)


def emit(
    sessions: sessionmaker[Session], tenant: str, events: list[tuple[str | None, int]]
) -> None:
    """Write test events (account, n) of the tenant, in this order, and pump them."""
    with transaction(sessions) as session:
        write_events(
            session, [(tenant, account, "entry.created", {"n": n}) for account, n in events]
        )
    pump(sessions)


def deliveries(sessions: sessionmaker[Session], endpoint_id: str) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
                .order_by(WebhookDelivery.event_id)
            )
        )


def run_until(
    sender: WebhookSender, endpoint_id: str, done: Callable[[], bool], timeout: float = 20.0
) -> None:
    """Run deliveries for the endpoint until `done` (each run about 0.2 s, as the task)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the deliveries did not finish in time"
        sender.run(endpoint_id, 0.2)
        time.sleep(0.02)


def all_final(sessions: sessionmaker[Session], endpoint_id: str) -> Callable[[], bool]:
    return lambda: all(d.status != "pending" for d in deliveries(sessions, endpoint_id))


def test_deliveries_are_signed_and_verify_with_the_library_and_the_client(
    hooks: FlaskClient,
    admin: Caller,
    moderator: Caller,
    factory: Factory,
    award: Callable[..., None],
    sessions: sessionmaker[Session],
    receiver: Receiver,
    sender_with: Callable[..., WebhookSender],
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url, description="crm")
    secret = endpoint["secret"]
    assert secret.startswith("whsec_") and endpoint["status"] == "active"
    # Shown once: never again.
    assert "secret" not in hooks.get(HOOKS + endpoint["id"], headers=admin.headers).json
    user = factory.user()
    award(moderator, reputation(user.id, 5, comment="first"))
    pump(sessions)
    run_until(sender_with(), endpoint["id"], all_final(sessions, endpoint["id"]))

    received = receiver.delivered()
    types = [r.event["type"] for r in received]
    assert types == ["request.accepted", "entry.created", "request.applied"]
    with sessions() as session:
        ids = session.scalars(
            text("SELECT id FROM events WHERE tenant_id = :t ORDER BY id"), {"t": factory.tenant_id}
        ).all()
    assert [int(r.webhook_id) for r in received] == ids
    for request in received:
        assert request.headers["content-type"] == "application/json"
        assert request.event["id"] == int(request.webhook_id)
        assert request.event["data"]["user_id"] == str(user.id)
        assert Webhook(secret).verify(request.body, request.headers) == request.event
        assert verify_webhook(request.body, request.headers, secret) == request.event
    tampered = received[1].body.replace(b'"amount":5', b'"amount":500')
    assert tampered != received[1].body
    with pytest.raises(LibraryRefused):
        Webhook(secret).verify(tampered, received[1].headers)
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(tampered, received[1].headers, secret)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(received[0].body, received[0].headers, secret, now=time.time() + 301)
    other = add_endpoint(hooks, admin, receiver.url)["secret"]
    with pytest.raises(WebhookVerificationError):
        verify_webhook(received[0].body, received[0].headers, other)

    log = hooks.get(HOOKS + endpoint["id"] + "/deliveries", headers=admin.headers).json
    assert [d["event_id"] for d in log["results"]] == ids
    first = log["results"][0]
    assert first["status"] == "delivered" and first["attempts"] == 1
    assert first["last_status_code"] == 200 and first["last_latency_ms"] is not None
    assert first["delivered_at"] and first["last_error"] is None


def test_after_a_rotation_both_secrets_verify_during_the_overlap(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
    sender_with: Callable[..., WebhookSender],
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url)
    old = endpoint["secret"]
    path = HOOKS + endpoint["id"] + "/rotate-secret"
    rotated = hooks.post(path, json={"overlap_hours": 1}, headers=admin.headers)
    assert rotated.status_code == 200
    new = rotated.json["secret"]
    assert new != old and rotated.json["previous_secret_until"]
    sender = sender_with()
    emit(sessions, factory.tenant_id, [(new_ulid(), 1)])
    run_until(sender, endpoint["id"], lambda: len(receiver.delivered()) == 1)
    (request,) = receiver.delivered()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(request.body, request.headers)
        verify_webhook(request.body, request.headers, secret)

    # Without an overlap, only the new secret signs.
    newest = hooks.post(path, json={"overlap_hours": 0}, headers=admin.headers).json["secret"]
    emit(sessions, factory.tenant_id, [(new_ulid(), 2)])
    run_until(sender, endpoint["id"], lambda: len(receiver.delivered()) == 2)
    last = receiver.delivered()[-1]
    assert len(last.headers["webhook-signature"].split(" ")) == 1
    verify_webhook(last.body, last.headers, newest)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(last.body, last.headers, new)


def test_an_accounts_events_wait_for_its_failing_event_and_other_accounts_go_on(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
    sender_with: Callable[..., WebhookSender],
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url)
    slow, quick = new_ulid(), new_ulid()
    failures_left = {"n": 4}

    def fail_slow_first(headers: dict[str, str], body: bytes) -> tuple[int, float]:
        event = json.loads(body)
        if event["account_id"] == slow and event["data"]["n"] == 1 and failures_left["n"]:
            failures_left["n"] -= 1
            return 500, 0.0
        return 200, 0.0

    receiver.behaviour = fail_slow_first
    emit(sessions, factory.tenant_id, [(slow, 1), (quick, 1), (slow, 2), (quick, 2), (slow, 3)])
    emit(sessions, factory.tenant_id, [(None, 1), (quick, 3)])
    run_until(sender_with(), endpoint["id"], all_final(sessions, endpoint["id"]))

    requests = receiver.requests()
    of_slow = [r for r in requests if r.event["account_id"] == slow]
    # The first event failed four times and was retried; the later ones waited for it.
    assert [(r.event["data"]["n"], r.status) for r in of_slow] == [
        (1, 500), (1, 500), (1, 500), (1, 500), (1, 200), (2, 200), (3, 200),
    ]  # fmt: skip
    assert [r.event["account_seq"] for r in of_slow if r.status == 200] == [1, 2, 3]
    # The other account and the tenant-wide event did not wait.
    slow_done = of_slow[4].at
    others = [r for r in requests if r.event["account_id"] != slow]
    assert len(others) == 4 and all(r.at < slow_done for r in others)
    assert [r.event["data"]["n"] for r in others if r.event["account_id"] == quick] == [1, 2, 3]
    # Backed off between the attempts: at least the base each time.
    gaps = [b.at - a.at for a, b in itertools.pairwise(of_slow[:5])]
    assert all(gap >= 0.09 for gap in gaps), gaps
    first = deliveries(sessions, endpoint["id"])[0]
    assert first.status == "delivered" and first.attempts == 5
    assert first.last_status_code == 200 and first.last_error is None


def test_an_event_fanned_out_while_its_queues_head_fails_waits_with_the_queue(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    base_settings: Settings,
) -> None:
    # CI once saw an account's event 37 sent between its event 2's retries: the pump wrote
    # 37's delivery as due (its queue was due when read) while the sender recorded 2's
    # failure, whose push of the queue's wait could not see the uncommitted 37.
    endpoint = add_endpoint(hooks, admin, "http://127.0.0.1:9/")
    account = new_ulid()
    emit(sessions, factory.tenant_id, [(account, 1), (account, 2)])
    head = deliveries(sessions, endpoint["id"])[0].event_id
    with transaction(sessions) as session:
        write_events(session, [(factory.tenant_id, account, "entry.created", {"n": 3})])
        number_events(session)

    pump_session = sessions()
    fan_out(pump_session)  # event 3's delivery written as due, not yet committed
    failure = Attempt(head, 500, 1, "answered 500: busy")
    minute = base_settings.with_overrides(
        {"webhook_backoff_base": 60.0, "webhook_backoff_cap": 60.0}
    )
    recorder = threading.Thread(target=_record, args=(sessions, endpoint["id"], [failure], minute))
    recorder.start()
    recorder.join(0.5)
    pump_session.commit()
    pump_session.close()
    recorder.join(10)
    assert not recorder.is_alive()

    pending = [d for d in deliveries(sessions, endpoint["id"]) if d.status == "pending"]
    assert [d.attempts for d in pending] == [1, 0, 0]
    assert len({d.next_attempt_at for d in pending}) == 1, "the queue waits as a whole"
    with sessions() as session:
        assert due_queues(session, endpoint["id"], 10) == []


def _record(
    sessions: sessionmaker[Session], endpoint_id: str, attempts: list[Attempt], settings: Settings
) -> None:
    with transaction(sessions) as session:
        record_attempts(session, endpoint_id, attempts, settings)


def test_a_delivery_past_the_retry_window_fails_and_redelivery_brings_it(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
    sender_with: Callable[..., WebhookSender],
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url)
    account = new_ulid()
    broken = {"on": True}

    def refuse_first(headers: dict[str, str], body: bytes) -> tuple[int, float]:
        first = json.loads(body)["data"]["n"] == 1
        return (503, 0.0) if first and broken["on"] else (200, 0.0)

    receiver.behaviour = refuse_first
    emit(sessions, factory.tenant_id, [(account, 1), (account, 2)])
    # A window of about a second: then the first is kept as failed and the second goes.
    sender = sender_with(webhook_retry_hours=1 / 3600)
    run_until(sender, endpoint["id"], all_final(sessions, endpoint["id"]))
    first, second = deliveries(sessions, endpoint["id"])
    assert first.status == "failed" and first.attempts >= 2
    assert first.last_status_code == 503 and "answered 503" in (first.last_error or "")
    assert second.status == "delivered"
    assert [r.event["data"]["n"] for r in receiver.delivered()] == [2]

    broken["on"] = False
    path = HOOKS + endpoint["id"] + "/redeliver"
    again = hooks.post(path, json={"event_id": first.event_id}, headers=admin.headers)
    assert again.status_code == 200 and again.json == {"redelivered": 1}
    (pending,) = [d for d in deliveries(sessions, endpoint["id"]) if d.status == "pending"]
    assert pending.event_id == first.event_id and pending.attempts == 0
    run_until(sender, endpoint["id"], all_final(sessions, endpoint["id"]))
    assert [r.event["data"]["n"] for r in receiver.delivered()] == [2, 1]
    assert receiver.delivered()[-1].webhook_id == str(first.event_id)  # the same id

    # A range, and everything after an id, come again in order (the same ids).
    ids = [d.event_id for d in deliveries(sessions, endpoint["id"])]
    answer = hooks.post(path, json={"from_id": ids[0], "to_id": ids[1]}, headers=admin.headers).json
    assert answer == {"redelivered": 2}
    run_until(sender, endpoint["id"], all_final(sessions, endpoint["id"]))
    assert [r.event["data"]["n"] for r in receiver.delivered()][-2:] == [1, 2]
    assert hooks.post(path, json={"after": ids[0]}, headers=admin.headers).json == {
        "redelivered": 1
    }


def test_an_endpoint_failing_past_the_limit_is_disabled_with_an_event(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
    sender_with: Callable[..., WebhookSender],
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url)
    receiver.behaviour = always(500)
    emit(sessions, factory.tenant_id, [(new_ulid(), 1)])
    sender = sender_with(webhook_disable_after_hours=0.5 / 3600)

    def disabled() -> bool:
        with sessions() as session:
            return session.get_one(WebhookEndpoint, endpoint["id"]).status == "disabled"

    run_until(sender, endpoint["id"], disabled)
    shown = hooks.get(HOOKS + endpoint["id"], headers=admin.headers).json
    assert shown["status"] == "disabled" and shown["disabled_reason"].startswith("no 2xx since")
    with sessions() as session:
        (payload,) = session.scalars(
            text("SELECT payload FROM events WHERE tenant_id = :t AND type = :type"),
            {"t": factory.tenant_id, "type": DISABLED_EVENT},
        ).all()
    assert payload["endpoint_id"] == endpoint["id"] and payload["url"] == receiver.url
    assert payload["last_status_code"] == 500 and payload["failing_since"]
    assert payload["disabled_at"]
    # Nothing more is sent to it; the delivery waits (pending) for it to be enabled.
    sent = len(receiver.requests())
    sender.run(endpoint["id"], 0.2)
    assert len(receiver.requests()) == sent
    receiver.behaviour = always(200)
    enabled = hooks.patch(HOOKS + endpoint["id"], json={"status": "active"}, headers=admin.headers)
    assert enabled.json["status"] == "active" and enabled.json["disabled_reason"] is None
    run_until(sender, endpoint["id"], all_final(sessions, endpoint["id"]))
    assert deliveries(sessions, endpoint["id"])[0].status == "delivered"


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://127.0.0.1:9/hook",
        "http://localhost:8080/hook",  # a name that resolves to loopback
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
        "not a url",
        "http://no-such-host.invalid/hook",
    ],
)
def test_private_and_bad_urls_are_refused_naming_url(
    client: FlaskClient, admin: Caller, url: str
) -> None:
    answer = client.post(HOOKS, json={"url": url}, headers=admin.headers)
    assert answer.status_code == 400, answer.json
    assert answer.mimetype == "application/problem+json"
    assert [e["field"] for e in answer.json["errors"]] == ["url"]


def test_a_receiver_whose_name_turns_private_is_not_sent_to(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
    sender_with: Callable[..., WebhookSender],
) -> None:
    # Saved while allowed; delivery checks again with the sender's settings (DNS can change).
    endpoint = add_endpoint(hooks, admin, receiver.url)
    emit(sessions, factory.tenant_id, [(new_ulid(), 1)])
    sender_with(webhook_allow_private=False).run(endpoint["id"], 0.2)
    assert receiver.requests() == []
    (delivery,) = deliveries(sessions, endpoint["id"])
    assert delivery.status == "pending" and delivery.attempts >= 1
    assert "not sent" in (delivery.last_error or "")
    public = url_refusal("https://example.com/x", False, lambda host, port: ["93.184.215.14"])
    assert public is None


def test_a_name_that_turns_private_after_the_check_is_refused_on_connecting(
    receiver: Receiver,
    sender_with: Callable[..., WebhookSender],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the round's check saw a public address (here: a check that passes),
    then the name resolved to a private one. The connection itself is refused."""
    monkeypatch.setattr(webhook_sender, "url_refusal", lambda url, allow_private: None)
    sender = sender_with(webhook_allow_private=False)
    [attempt] = sender.send_round(receiver.url, SECRETS, [queue_of("a", 1)])
    assert attempt.status_code is None and not attempt.ok
    assert attempt.error == "not sent: connecting to 127.0.0.1, a private or reserved address"
    assert receiver.requests() == [] and receiver.connections_accepted == 0


def test_admin_routes_answer_4xx_problems_naming_the_field(
    hooks: FlaskClient,
    client: FlaskClient,
    admin: Caller,
    moderator: Caller,
    factory: Factory,
    receiver: Receiver,
    sessions: sessionmaker[Session],
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url, types=["entry.created"])
    one = HOOKS + endpoint["id"]

    def problem(answer: Any, status: int, field: str | None = None) -> None:
        assert answer.status_code == status, answer.json
        assert answer.mimetype == "application/problem+json"
        if field is not None:
            assert field in [e["field"] for e in answer.json["errors"]], answer.json

    problem(hooks.get(HOOKS), 401)
    problem(hooks.get(HOOKS, headers=moderator.headers), 403)
    problem(hooks.post(HOOKS, json={"url": receiver.url}, headers=moderator.headers), 403)
    problem(hooks.post(HOOKS, json={}, headers=admin.headers), 400, "url")
    problem(hooks.post(HOOKS, json={"url": receiver.url, "types": ["nope"]},
                       headers=admin.headers), 400, "types")  # fmt: skip
    problem(hooks.post(HOOKS, json={"url": receiver.url, "types": "entry.created"},
                       headers=admin.headers), 400, "types")  # fmt: skip
    problem(hooks.post(HOOKS, json={"url": receiver.url, "secret": "mine"},
                       headers=admin.headers), 400, "secret")  # fmt: skip
    problem(hooks.post(HOOKS, json={"url": "x" * 3000}, headers=admin.headers), 400, "url")
    problem(hooks.post(HOOKS, json={"url": "http://a\x00b/"}, headers=admin.headers), 400, "url")
    problem(hooks.post(HOOKS, json={"url": "http://a\ud800b/"}, headers=admin.headers),
            400, "url")  # fmt: skip
    problem(hooks.post(HOOKS, json={"url": receiver.url, "description": "a\x00"},
                       headers=admin.headers), 400, "description")  # fmt: skip
    problem(hooks.post(HOOKS, json=[1], headers=admin.headers), 400, "body")
    problem(hooks.post(HOOKS, data=b"{", headers=admin.headers | {"Content-Type":
            "application/json"}), 400, "body")  # fmt: skip
    problem(hooks.get(HOOKS + "01NOSUCHENDPOINT0000000000", headers=admin.headers), 404)
    problem(hooks.get(HOOKS + "x" * 300, headers=admin.headers), 404)
    problem(hooks.get(HOOKS + "%00" * 26, headers=admin.headers), 404)
    problem(hooks.patch(HOOKS + "%00", json={}, headers=admin.headers), 404)
    problem(hooks.patch(one, json={"status": "paused"}, headers=admin.headers), 400, "status")
    problem(client.patch(one, json={"url": "http://127.0.0.1/x"}, headers=admin.headers),
            400, "url")  # fmt: skip
    problem(hooks.post(one + "/rotate-secret", json={"overlap_hours": -1},
                       headers=admin.headers), 400, "overlap_hours")  # fmt: skip
    redeliver = one + "/redeliver"
    problem(hooks.post(redeliver, json={}, headers=admin.headers), 400, "event_id")
    problem(hooks.post(redeliver, json={"event_id": 1, "after": 0}, headers=admin.headers),
            400, "event_id")  # fmt: skip
    problem(hooks.post(redeliver, json={"from_id": 5}, headers=admin.headers), 400, "to_id")
    problem(hooks.post(redeliver, json={"after": 2**63 - 1}, headers=admin.headers), 400, "after")
    problem(hooks.post(redeliver, json={"from_id": 5, "to_id": 4}, headers=admin.headers),
            400, "to_id")  # fmt: skip
    problem(hooks.post(redeliver, json={"event_id": "x"}, headers=admin.headers), 400, "event_id")
    problem(hooks.post(redeliver, json={"event_id": 2**70}, headers=admin.headers),
            400, "event_id")  # fmt: skip
    problem(hooks.post(redeliver, json={"event_id": 10**15}, headers=admin.headers), 404)
    # An event of another tenant is not found; one of a type the endpoint skips is a 409.
    stranger = Factory(sessions)
    emit(sessions, stranger.tenant_id, [(new_ulid(), 1)])
    with transaction(sessions) as session:
        write_events(session, [(factory.tenant_id, None, "batch.accepted", {})])
    pump(sessions)
    with sessions() as session:
        foreign = session.scalar(text("SELECT max(id) FROM events WHERE tenant_id = :t"),
                                 {"t": stranger.tenant_id})  # fmt: skip
        skipped = session.scalar(text("SELECT max(id) FROM events WHERE tenant_id = :t"),
                                 {"t": factory.tenant_id})  # fmt: skip
    problem(hooks.post(redeliver, json={"event_id": foreign}, headers=admin.headers), 404)
    problem(hooks.post(redeliver, json={"event_id": skipped}, headers=admin.headers), 409)
    deliveries_url = one + "/deliveries"
    problem(hooks.get(deliveries_url + "?limit=0", headers=admin.headers), 400, "limit")
    problem(hooks.get(deliveries_url + "?after=-1", headers=admin.headers), 400, "after")
    problem(hooks.get(deliveries_url + "?status=lost", headers=admin.headers), 400, "status")
    problem(hooks.get(HOOKS + "01NOSUCHENDPOINT0000000000/deliveries", headers=admin.headers),
            404)  # fmt: skip
    # Another tenant's admin sees none of it.
    outsider = stranger.caller(Role.ADMIN)
    problem(hooks.get(one, headers=outsider.headers), 404)
    assert hooks.get(HOOKS, headers=outsider.headers).json == {"results": []}
    listed = hooks.get(HOOKS, headers=admin.headers).json["results"]
    assert [e["id"] for e in listed] == [endpoint["id"]]
    assert listed[0]["types"] == ["entry.created"]


def test_the_delivery_log_pages_by_cursor(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url)
    emit(sessions, factory.tenant_id, [(new_ulid(), n) for n in range(5)])
    url = HOOKS + endpoint["id"] + "/deliveries?limit=2&status=pending"
    seen: list[int] = []
    while url:
        page = hooks.get(url, headers=admin.headers).json
        seen += [d["event_id"] for d in page["results"]]
        url = page["next"]
    assert len(seen) == 5 and seen == sorted(seen)


def test_the_pump_sends_one_task_per_endpoint_and_again_once_a_task_is_lost(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
    celery_app: TallyCelery,
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url)
    emit(sessions, factory.tenant_id, [(new_ulid(), 1)])
    redis, keys = celery_app.resources.redis, celery_app.resources.keys
    with sessions() as session:
        assert endpoint["id"] in endpoints_due(session)
    sent: list[str] = []
    queue_deliveries(redis, keys, [endpoint["id"]], sent.append)
    queue_deliveries(redis, keys, [endpoint["id"]], sent.append)
    assert sent == [endpoint["id"]]  # one queued task, not one per pump
    # The task was lost: once its mark lapses the next pump sends another.
    redis.expire(keys.webhook_mark(endpoint["id"]), 1)
    time.sleep(1.2)
    queue_deliveries(redis, keys, [endpoint["id"]], sent.append)
    assert sent == [endpoint["id"]] * 2
    delivery_finished(redis, keys, endpoint["id"])


def test_the_deliver_task_sends_and_clears_its_mark(
    app_with: Callable[..., Flask],
    admin: Caller,
    factory: Factory,
    receiver: Receiver,
) -> None:
    app = app_with(**FAST)
    celery: TallyCelery = app.extensions["tally"]
    endpoint = add_endpoint(app.test_client(), admin, receiver.url)
    sessions = celery.resources.sessions
    emit(sessions, factory.tenant_id, [(new_ulid(), 1), (new_ulid(), 2)])
    redis, keys = celery.resources.redis, celery.resources.keys
    queue_deliveries(redis, keys, [endpoint["id"]], lambda _: None)
    assert worker_tasks.deliver_webhooks.name == DELIVER_WEBHOOKS_TASK
    sent = celery.tasks[DELIVER_WEBHOOKS_TASK].apply(args=[endpoint["id"]]).get()
    assert sent == 2 and len(receiver.delivered()) == 2
    assert not redis.exists(keys.webhook_mark(endpoint["id"]))
    celery.webhooks.close()


def test_backoff_grows_with_jitter_within_its_bounds() -> None:
    for attempts in range(1, 12):
        for _ in range(50):
            delay = backoff_delay(attempts, 5.0, 3600.0)
            assert 5.0 <= delay <= min(3600.0, 5.0 * 2**attempts)
    assert backoff_delay(1, 5.0, 3600.0, rng=lambda low, high: high) == 10.0
    assert backoff_delay(40, 5.0, 3600.0, rng=lambda low, high: high) == 3600.0


def test_the_cli_adds_lists_disables_and_redelivers(
    services: Services,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
) -> None:
    runner = CliRunner(
        env={"TALLY_DATABASE_URL": services.database_url, "TALLY_WEBHOOK_ALLOW_PRIVATE": "1"}
    )

    def tally(*args: str, code: int = 0) -> Any:
        result = runner.invoke(cli, ["webhooks", *args, "--tenant", factory.tenant_id, "--json"])
        assert result.exit_code == code, result.output
        return json.loads(result.output) if code == 0 else result.output

    added = tally("add", "--url", receiver.url, "--type", "entry.created")
    assert added["secret"].startswith("whsec_") and added["types"] == ["entry.created"]
    listed = tally("list")["endpoints"]
    assert [e["id"] for e in listed] == [added["id"]] and "secret" not in listed[0]
    assert "types" in tally("add", "--url", receiver.url, "--type", "nope", code=1)
    private = CliRunner(env={"TALLY_DATABASE_URL": services.database_url}).invoke(
        cli, ["webhooks", "add", "--url", receiver.url, "--tenant", factory.tenant_id]
    )
    assert private.exit_code == 1 and "url:" in private.output

    emit(sessions, factory.tenant_id, [(new_ulid(), 1), (new_ulid(), 2)])
    with sessions() as session:
        first, last = session.execute(
            text("SELECT min(id), max(id) FROM events WHERE tenant_id = :t"),
            {"t": factory.tenant_id},
        ).one()
    assert tally("redeliver", added["id"], "--from-id", str(first), "--to-id", str(last)) == {
        "redelivered": 2
    }
    assert tally("redeliver", added["id"], "--after", str(first)) == {"redelivered": 1}
    assert "event-id" in tally("redeliver", added["id"], code=2).replace("_", "-")
    assert tally("disable", added["id"])["status"] == "disabled"
    assert "no webhook endpoint" in tally("disable", "01NOSUCHENDPOINT0000000000", code=1)
    assert tally("list")["endpoints"][0]["status"] == "disabled"


def test_one_run_per_endpoint_at_a_time(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
    sender_with: Callable[..., WebhookSender],
    celery_app: TallyCelery,
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url)
    emit(sessions, factory.tenant_id, [(new_ulid(), 1)])
    sender = sender_with()
    with celery_app.resources.engine.connect() as other_run:
        other_run.execute(
            text("SELECT pg_advisory_xact_lock(:key, hashtext(:endpoint))"),
            {"key": DELIVERY_LOCK, "endpoint": endpoint["id"]},
        )
        assert sender.run(endpoint["id"], 0.2) == Run(busy=True)
        assert receiver.requests() == []
        other_run.rollback()
    # A budget no round on a slow machine outlasts: the run ends because nothing more is
    # due (more=False), not because its time ran out.
    assert sender.run(endpoint["id"], 30) == Run(sent=1)
    assert len(receiver.delivered()) == 1
    # No run's lock outlives it, on any server connection (a session-level lock would,
    # behind a transaction-mode PgBouncer: `make test-pgbouncer`).
    with sessions() as session:
        assert session.scalar(DELIVERY_LOCKS_HELD) == 0


DELIVERY_LOCKS_HELD = text(f"""
    SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {DELIVERY_LOCK}
""")


def test_recording_a_round_reads_its_own_rows_only_behind_any_backlog(
    hooks: FlaskClient,
    admin: Caller,
    sessions: sessionmaker[Session],
    celery_app: TallyCelery,
    base_settings: Settings,
) -> None:
    """On a connection whose statements take a generic plan made while the endpoint had
    ten pending deliveries (and the table's statistics said so: tally analyzes it once a
    minute, shared.platform.statistics), recording a round of ten reads about ten rows,
    not the endpoint's 5,000 others (such a plan once compared every pending delivery
    with every id of the round: 14 s a round behind some 30,000)."""
    endpoint = add_endpoint(hooks, admin, "http://127.0.0.1:9/hook")["id"]

    def pending(first: int, last: int) -> None:
        with transaction(sessions) as session:
            session.execute(
                text("""
                    INSERT INTO webhook_deliveries (endpoint_id, event_id, account_id)
                    SELECT :endpoint, n, 'account-' || n % 7
                    FROM generate_series(CAST(:f AS bigint), CAST(:l AS bigint)) n
                """),
                {"endpoint": endpoint, "f": first, "l": last},
            )

    def record(session: Session, ids: range) -> None:
        attempts = [Attempt(n, 200, 5, None) for n in ids]
        record_attempts(session, endpoint, attempts, base_settings)

    pending(1, 10)
    engine = celery_app.resources.engine
    with engine.connect() as connection:
        connection.execute(text("ANALYZE webhook_deliveries"))
        connection.commit()
    with engine.connect() as connection:
        connection.execute(text("SET plan_cache_mode = force_generic_plan"))
        connection.commit()
        with Session(bind=connection) as session:
            for n in range(1, 7):  # prepared on its fifth run, planned then
                record(session, range(n, n + 1))
                session.commit()
            pending(1_000, 6_000)
            before = rows_read(session)
            record(session, range(5_990, 6_000))
            read = rows_read(session) - before
            # And its statements were planned for the round, not by that generic plan
            # (within the range it would still compare each row with each id).
            mode = session.scalar(text("SHOW plan_cache_mode"))
            session.commit()
    assert read <= 30
    assert mode == "force_custom_plan"
    with sessions() as session:
        statuses = session.execute(
            text("""
                SELECT status, count(*) FROM webhook_deliveries
                WHERE endpoint_id = :endpoint GROUP BY status
            """),
            {"endpoint": endpoint},
        ).all()
    assert dict(statuses) == {"delivered": 16, "pending": 4_995}


def test_a_delivery_added_to_a_long_queue_reads_one_entry_of_it(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
) -> None:
    """The fan-out finds how long a queue waits in one entry of the queue's index, not by
    reading the whole queue for each delivery it adds (migration 0016)."""
    endpoint = add_endpoint(hooks, admin, "http://127.0.0.1:9/hook")["id"]
    account = new_ulid()
    with transaction(sessions) as session:
        session.execute(
            text("""
                INSERT INTO webhook_deliveries (endpoint_id, event_id, account_id)
                SELECT :endpoint, n, :account
                FROM generate_series(CAST(1e12 AS bigint), CAST(1e12 AS bigint) + 2999) n
            """),
            {"endpoint": endpoint, "account": account},
        )
    with sessions() as session:  # as tally's own maintenance would, once a minute
        session.execute(text("ANALYZE webhook_deliveries"))
        session.commit()
    with transaction(sessions) as session:
        write_events(
            session, [(factory.tenant_id, account, "entry.created", {"n": n}) for n in range(5)]
        )
    with transaction(sessions) as session:
        number_events(session)
    with transaction(sessions) as session:
        before = rows_read(session)
        assert fan_out(session) == 5
        read = rows_read(session) - before
    assert read <= 30


def rows_read(session: Session) -> int:
    """The rows of webhook_deliveries read by index or by scan on this connection that its
    statistics have not yet flushed, earlier transactions' included: so compare two
    readings taken in one transaction."""
    read = session.scalar(
        text("""
            SELECT idx_tup_fetch + seq_tup_read FROM pg_stat_xact_user_tables
            WHERE relname = 'webhook_deliveries'
        """)
    )
    return int(read or 0)


def test_retention_takes_the_finished_deliveries_of_events_gone(
    hooks: FlaskClient,
    admin: Caller,
    factory: Factory,
    sessions: sessionmaker[Session],
    receiver: Receiver,
) -> None:
    endpoint = add_endpoint(hooks, admin, receiver.url)
    emit(sessions, factory.tenant_id, [(new_ulid(), 1)])
    gone = 10**15 + 1  # no such event: as if retention had deleted it
    with transaction(sessions) as session:
        for offset, status in enumerate(("delivered", "failed", "pending")):
            session.add(WebhookDelivery(endpoint_id=endpoint["id"], event_id=gone + offset,
                                        status=status))  # fmt: skip
    with transaction(sessions) as session:
        assert prune_deliveries(session) >= 2
    left = [(d.event_id, d.status) for d in deliveries(sessions, endpoint["id"])]
    assert [status for _, status in left] == ["pending", "pending"]  # its own, and the gone one
    assert left[1][0] == gone + 2


# The HTTP exchange itself (libcurl's handles): sent straight from `send_round`, each
# queue one account's events, with no database in between.


def queue_of(account: str, count: int, payload: dict[str, Any] | None = None) -> list[Head]:
    at = datetime.now(UTC)
    return [
        Head(n, 0, Event(n, n, "t", account, "entry.created", at, payload or {"n": n}))
        for n in range(1, count + 1)
    ]


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    receiver: Receiver, sender_with: Callable[..., WebhookSender]
) -> None:
    elsewhere = Receiver()
    elsewhere.start()
    try:
        receiver.behaviour = always(307)
        receiver.answer_headers = {"Location": elsewhere.url}
        [attempt] = sender_with().send_round(receiver.url, SECRETS, [queue_of("a", 2)])
        assert attempt.status_code == 307 and not attempt.ok
        assert attempt.error == "answered 307: ok"
        assert elsewhere.requests() == []
    finally:
        elsewhere.stop()


def test_an_answer_later_than_the_timeout_is_a_failure_that_says_so(
    receiver: Receiver, sender_with: Callable[..., WebhookSender]
) -> None:
    receiver.behaviour = lambda headers, body: (200, 1.5)
    sender = sender_with(webhook_timeout=0.5)
    [attempt] = sender.send_round(receiver.url, SECRETS, [queue_of("a", 1)])
    assert attempt.status_code is None and attempt.error == "no answer within 0.5 s"


def test_a_receiver_that_refuses_connections_is_a_failure_naming_the_error(
    sender_with: Callable[..., WebhookSender],
) -> None:
    down = Receiver()  # a free port, nothing listening
    [attempt] = sender_with().send_round(down.url, SECRETS, [queue_of("a", 1)])
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("curl error 7:")


def test_a_long_answer_is_cut_off_and_its_status_kept(
    receiver: Receiver, sender_with: Callable[..., WebhookSender]
) -> None:
    """The sender reads ANSWER_READ_MAX bytes of an answer, not more: here the receiver
    stalls after twice that, and the attempt still ends with its status (reading on, it
    would end in the timeout, with none)."""
    receiver.answer_body = b"x" * (2 * ANSWER_READ_MAX)
    receiver.answer_length = 3 * ANSWER_READ_MAX
    sender = sender_with(webhook_timeout=3.0)
    [ok] = sender.send_round(receiver.url, SECRETS, [queue_of("a", 1)])
    assert ok.ok and ok.status_code == 200, ok
    receiver.behaviour = always(500)
    [failed] = sender.send_round(receiver.url, SECRETS, [queue_of("a", 1)])
    assert failed.status_code == 500
    assert failed.error == "answered 500: " + "x" * ERROR_MAX


def test_a_large_event_goes_in_one_request_and_connections_are_kept_alive(
    receiver: Receiver, sender_with: Callable[..., WebhookSender]
) -> None:
    """No `Expect: 100-continue` (libcurl's before a body over 1 MiB, which waits up to a
    second for a receiver that does not answer it), and a connection per sender thread,
    not per delivery."""
    sender = sender_with()
    large = queue_of("a", 1, {"text": "y" * (1 << 20)})
    [attempt] = sender.send_round(receiver.url, SECRETS, [large])
    assert attempt.ok and "expect" not in receiver.requests()[0].headers
    queues = [queue_of(account, 20) for account in "abcdefgh"]
    attempts = sender.send_round(receiver.url, SECRETS, queues)
    assert len(attempts) == 160 and all(attempt.ok for attempt in attempts)
    assert len(receiver.delivered()) == 161
    assert receiver.connections_accepted <= sender.settings.webhook_sender_threads
