"""Sending webhook deliveries: signed, at least once, in order per account.

One run per endpoint at a time (a session-level advisory lock on the endpoint), so
several workers never reorder an account's events. A run works in rounds: it takes
the *head* of each of the endpoint's queues (an account's earliest pending delivery;
tenant-wide events are one queue of their own) whose next attempt is due, sends them
all at once, records the answers, and goes again. A later event of an account is
never sent while an earlier one is pending, so it waits for the retries of that one;
other accounts go on meanwhile. An answer other than 2xx is retried with exponential
backoff and jitter until the retry window from the first attempt has passed; the
delivery is then kept as `failed` (redeliverable) and the account's next event goes.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

import httpx
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from shared.events.log import Event, event_document, write_events
from shared.events.webhooks import HEADS, signing_secrets, url_refusal
from shared.fields import format_timestamp
from shared.models import DeliveryStatus, EndpointStatus, WebhookDelivery, WebhookEndpoint
from shared.platform.config import Settings
from shared.platform.db import transaction
from shared.platform.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_ENDPOINTS_DISABLED

log = logging.getLogger(__name__)

# pg_try_advisory_lock(DELIVERY_LOCK, hashtext(endpoint id)): one run per endpoint.
DELIVERY_LOCK = 0x7A11E7E3
HEADS_PER_ROUND = 32
SENDER_THREADS = 8
# What of a receiver's answer, or of an error, the delivery log keeps.
ERROR_MAX = 300
DISABLED_EVENT = "webhook.endpoint_disabled"

DUE_HEADS = text(f"""
    SELECT h.event_id, h.attempts, e.id, e.account_seq, e.tenant_id, e.account_id, e.type,
           e.occurred_at, e.payload
    FROM ({HEADS.format(where="AND endpoint_id = :endpoint")}) h
    LEFT JOIN events e ON e.id = h.event_id
    WHERE h.next_attempt_at <= now()
    ORDER BY h.event_id
    LIMIT :limit
""")


NEXT_DUE = text(f"""
    SELECT EXTRACT(EPOCH FROM min(h.next_attempt_at) - now())
    FROM ({HEADS.format(where="AND endpoint_id = :endpoint")}) h
""")


@dataclass(frozen=True)
class Head:
    """A head delivery due now, with its event (None if retention deleted it)."""

    event_id: int
    attempts: int
    event: Event | None


@dataclass(frozen=True)
class Attempt:
    """What one send got: a status code, or an error without one."""

    event_id: int
    status_code: int | None
    latency_ms: int
    error: str | None
    # Never worth another try (the event is gone from the log).
    final: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Run:
    """What a run did: deliveries sent, whether more are due, whether another run had the
    endpoint."""

    sent: int = 0
    more: bool = False
    busy: bool = False


def backoff_delay(
    attempts: int, base: float, cap: float, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """Seconds before the next try after `attempts` failed ones: exponential with full
    jitter above the base, `base <= delay <= min(cap, base * 2^attempts)`."""
    ceiling = min(cap, base * 2.0 ** min(attempts, 62))
    return rng(base, max(base, ceiling)) if ceiling > base else min(base, cap)


def sign(secrets: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` header: one `v1,<signature>` per secret, space-separated."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets)


def due_heads(session: Session, endpoint_id: str, limit: int) -> list[Head]:
    rows = session.execute(DUE_HEADS, {"endpoint": endpoint_id, "limit": limit}).all()
    return [Head(row[0], row[1], Event(*row[2:]) if row[2] is not None else None) for row in rows]


class WebhookSender:
    """Runs deliveries for endpoints: one httpx client (kept-alive connections) and a
    small thread pool per process, built on first use."""

    def __init__(self, settings: Settings, engine: Engine, sessions: sessionmaker[Session]):
        self.settings = settings
        self.engine = engine
        self.sessions = sessions

    @cached_property
    def http(self) -> httpx.Client:
        # No redirects: a receiver must not send tally's requests on to another address.
        return httpx.Client(
            timeout=self.settings.webhook_timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=4 * SENDER_THREADS),
        )

    @cached_property
    def pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="webhooks")

    def close(self) -> None:
        if "pool" in self.__dict__:
            self.pool.shutdown(wait=True)
        if "http" in self.__dict__:
            self.http.close()

    def run(self, endpoint_id: str, seconds: float) -> Run:
        """Deliver the endpoint's due heads, round after round, for about `seconds`."""
        with self.engine.connect() as lock:
            key = {"key": DELIVERY_LOCK, "endpoint": endpoint_id}
            taken = lock.execute(
                text("SELECT pg_try_advisory_lock(:key, hashtext(:endpoint))"), key
            ).scalar()
            lock.commit()
            if not taken:
                return Run(busy=True)
            try:
                return self._rounds(endpoint_id, time.monotonic() + seconds)
            finally:
                try:
                    lock.execute(text("SELECT pg_advisory_unlock(:key, hashtext(:endpoint))"), key)
                    lock.commit()
                except Exception:
                    # Never hand a connection that may still hold the lock back to the pool.
                    lock.invalidate()
                    raise

    def _rounds(self, endpoint_id: str, deadline: float) -> Run:
        sent = 0
        while True:
            with transaction(self.sessions) as session:
                endpoint = session.get(WebhookEndpoint, endpoint_id)
                if endpoint is None or endpoint.status != EndpointStatus.ACTIVE:
                    return Run(sent)
                heads = due_heads(session, endpoint_id, HEADS_PER_ROUND)
                now = session.scalar(select(func.now()))
                assert now is not None
                secrets, url = signing_secrets(endpoint, now), endpoint.url
                wait = None if heads else session.scalar(NEXT_DUE, {"endpoint": endpoint_id})
            if not heads:
                # A retry due before the run's end is waited for here, not by a new task.
                if wait is None or time.monotonic() + float(wait) > deadline:
                    return Run(sent)
                time.sleep(max(0.0, float(wait)))
                continue
            attempts = self.send_round(url, secrets, heads)
            with transaction(self.sessions) as session:
                record_attempts(session, endpoint_id, attempts, self.settings)
            sent += len(attempts)
            if time.monotonic() > deadline:
                return Run(sent, more=True)

    def send_round(self, url: str, secrets: list[str], heads: list[Head]) -> list[Attempt]:
        """Send these heads at once (they are of distinct queues); their outcomes."""
        refusal = url_refusal(url, self.settings.webhook_allow_private)
        if refusal is not None:
            return [Attempt(head.event_id, None, 0, f"not sent: {refusal}") for head in heads]
        return list(self.pool.map(lambda head: self.send(url, secrets, head), heads))

    def send(self, url: str, secrets: list[str], head: Head) -> Attempt:
        """POST one event, signed; what the receiver answered."""
        if head.event is None:
            return Attempt(head.event_id, None, 0, "the event is no longer in the log", True)
        body = json.dumps(event_document(head.event), separators=(",", ":"))
        msg_id = str(head.event_id)
        timestamp = datetime.now(UTC)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": sign(secrets, msg_id, timestamp, body),
            "content-type": "application/json",
            "user-agent": "tally-webhooks",
        }
        started = time.monotonic()
        try:
            with self.http.stream("POST", url, content=body.encode(), headers=headers) as answer:
                latency = int((time.monotonic() - started) * 1000)
                error = None
                if not 200 <= answer.status_code < 300:
                    error = f"answered {answer.status_code}: {_first_bytes(answer)}"
                return Attempt(head.event_id, answer.status_code, latency, error)
        except httpx.TimeoutException:
            error = f"no answer within {self.settings.webhook_timeout} s"
        except httpx.HTTPError as failure:
            error = f"{type(failure).__name__}: {failure}"[:ERROR_MAX]
        return Attempt(head.event_id, None, int((time.monotonic() - started) * 1000), error)


def _first_bytes(answer: httpx.Response) -> str:
    for chunk in answer.iter_bytes(ERROR_MAX):
        return chunk[:ERROR_MAX].decode(errors="replace")
    return ""


def record_attempts(
    session: Session, endpoint_id: str, attempts: list[Attempt], settings: Settings
) -> None:
    """Write a round's outcomes: delivered; or retried after a backoff; or failed once the
    retry window from the first attempt has passed. Then the endpoint's health."""
    now = session.scalar(select(func.now()))
    assert now is not None
    window = timedelta(hours=settings.webhook_retry_hours)
    for attempt in attempts:
        delivery = session.get(WebhookDelivery, (endpoint_id, attempt.event_id))
        if delivery is None or delivery.status != DeliveryStatus.PENDING:
            continue  # redelivered or changed meanwhile
        delivery.attempts += 1
        delivery.first_attempt_at = delivery.first_attempt_at or now
        delivery.last_attempt_at = now
        delivery.last_status_code = attempt.status_code
        delivery.last_latency_ms = attempt.latency_ms
        delivery.last_error = attempt.error
        if attempt.ok:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = now
        elif attempt.final or delivery.first_attempt_at <= now - window:
            delivery.status = DeliveryStatus.FAILED
        else:
            delay = backoff_delay(
                delivery.attempts, settings.webhook_backoff_base, settings.webhook_backoff_cap
            )
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        outcome = "retried" if delivery.status == DeliveryStatus.PENDING else delivery.status
        WEBHOOK_ATTEMPTS.labels(outcome).inc()
    note_health(session, endpoint_id, attempts, now, settings)


def note_health(
    session: Session,
    endpoint_id: str,
    attempts: list[Attempt],
    now: datetime,
    settings: Settings,
) -> None:
    """A 2xx clears the endpoint's failing time; a round of failures starts it, and an
    endpoint failing longer than TALLY_WEBHOOK_DISABLE_AFTER_HOURS is disabled, with a
    `webhook.endpoint_disabled` event."""
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
    if endpoint is None or endpoint.status != EndpointStatus.ACTIVE:
        return
    if any(attempt.ok for attempt in attempts):
        endpoint.failing_since = None
        return
    failures = [attempt for attempt in attempts if not attempt.final]
    if not failures:
        return
    endpoint.failing_since = endpoint.failing_since or now
    if endpoint.failing_since > now - timedelta(hours=settings.webhook_disable_after_hours):
        return
    last = failures[-1]
    endpoint.status = EndpointStatus.DISABLED
    endpoint.disabled_reason = f"no 2xx since {format_timestamp(endpoint.failing_since)}"
    endpoint.updated_at = now
    payload = {
        "endpoint_id": endpoint.id,
        "url": endpoint.url,
        "failing_since": format_timestamp(endpoint.failing_since),
        "disabled_at": format_timestamp(now),
        "last_status_code": last.status_code,
        "last_error": last.error,
    }
    write_events(session, [(endpoint.tenant_id, None, DISABLED_EVENT, payload)])
    WEBHOOK_ENDPOINTS_DISABLED.inc()
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, endpoint.disabled_reason)
