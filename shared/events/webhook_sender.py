"""Sending webhook deliveries: signed, at least once, in order per account.

One run per endpoint at a time (an advisory lock on the endpoint, held by a transaction
open for the run), so several workers never reorder an account's events. A run works in
rounds: it reads the endpoint's oldest due deliveries (at most WINDOW), which hold a
prefix of each due queue (an account's pending deliveries in event order; tenant-wide
events are one queue of their own: see shared.events.webhooks), sends each queue's in
order on one of the pool's threads, queues side by side, and stops a queue at its first
failure; then it records the round in three statements and goes again. A later event of
an account is never sent while an earlier one is pending: the failed one's queue waits,
as a whole, for its retry, with exponential backoff and jitter, until the retry window
from its first attempt has passed; it is then kept as `failed` (redeliverable) and the
queue goes on. Other accounts go on meanwhile.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

import certifi
import pycurl
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from shared.events.log import DELIVERY_LOCK, FAN_OUT_LOCK, Event, event_document, write_events
from shared.events.webhooks import public_address, signing_secrets, url_refusal
from shared.fields import format_timestamp
from shared.models import DeliveryStatus, EndpointStatus, WebhookEndpoint
from shared.platform.config import Settings
from shared.platform.db import transaction
from shared.platform.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_ENDPOINTS_DISABLED

log = logging.getLogger(__name__)

# Deliveries read per round (TALLY_WEBHOOK_SENDER_THREADS send its queues side by side).
WINDOW = 1000
# What of a receiver's answer, or of an error, the delivery log keeps.
ERROR_MAX = 300
# How much of a receiver's answer is read (so that its connection is kept alive).
ANSWER_READ_MAX = 64 * 1024
DISABLED_EVENT = "webhook.endpoint_disabled"

DUE = text("""
    SELECT d.event_id, d.attempts, e.id, e.account_seq, e.tenant_id, e.account_id, e.type,
           e.occurred_at, e.payload, d.account_id
    FROM webhook_deliveries d
    LEFT JOIN events e ON e.id = d.event_id
    WHERE d.endpoint_id = :endpoint AND d.status = 'pending' AND d.next_attempt_at <= now()
    ORDER BY d.event_id
    LIMIT :limit
""")

NEXT_DUE = text("""
    SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now()) FROM webhook_deliveries
    WHERE endpoint_id = :endpoint AND status = 'pending'
""")

# A round's rows are looked for between its first and last event id (the primary key's
# range), so that no plan reads the endpoint's other pending deliveries; and planned for
# each round (record_attempts). A generic plan made while the table was small (psycopg
# prepares a statement on its fifth run) read every pending delivery of the endpoint and
# compared each with every id of the round: behind a backlog of some 30,000, one round's
# record took 14 s, held the fan-out's lock as long, and the lag grew (PERFORMANCE.md).
DELIVERED = text("""
    UPDATE webhook_deliveries d
    SET status = 'delivered', attempts = d.attempts + 1,
        first_attempt_at = COALESCE(d.first_attempt_at, now()), last_attempt_at = now(),
        last_status_code = v.code, last_latency_ms = v.latency, last_error = NULL,
        delivered_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:codes AS integer[]),
                CAST(:latencies AS integer[])) AS v(event_id, code, latency)
    WHERE d.endpoint_id = :endpoint AND d.event_id BETWEEN :first AND :last
      AND d.event_id = v.event_id AND d.status = 'pending'
""")

# A failed attempt: retried after its backoff (and its whole queue waits as long), or
# failed for good once the retry window from its first attempt has passed (its queue
# goes on at once). Its rows are found as DELIVERED's.
NOT_DELIVERED = text("""
    WITH v AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:codes AS integer[]),
                             CAST(:latencies AS integer[]), CAST(:errors AS text[]),
                             CAST(:finals AS boolean[]), CAST(:delays AS float8[]))
            AS v(event_id, code, latency, error, final, delay)
    ), tried AS (
        UPDATE webhook_deliveries d
        SET attempts = d.attempts + 1,
            first_attempt_at = COALESCE(d.first_attempt_at, now()), last_attempt_at = now(),
            last_status_code = v.code, last_latency_ms = v.latency, last_error = v.error,
            status = CASE WHEN v.final OR COALESCE(d.first_attempt_at, now())
                                          <= now() - make_interval(secs => :window)
                          THEN 'failed' ELSE 'pending' END,
            next_attempt_at = now() + make_interval(secs => v.delay)
        FROM v
        WHERE d.endpoint_id = :endpoint AND d.event_id BETWEEN :first AND :last
          AND d.event_id = v.event_id AND d.status = 'pending'
        RETURNING d.event_id, d.account_id, d.status, d.next_attempt_at
    ), waiting AS (
        UPDATE webhook_deliveries q SET next_attempt_at = t.next_attempt_at
        FROM tried t
        WHERE t.status = 'pending' AND q.endpoint_id = :endpoint AND q.status = 'pending'
          AND COALESCE(q.account_id, '') = COALESCE(t.account_id, '')
          AND q.event_id > t.event_id
    )
    SELECT status FROM tried
""")


@dataclass(frozen=True)
class Head:
    """A delivery due now, with its event (None if retention deleted it)."""

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
    # The delivery's failed attempts before this one (its backoff grows with them).
    attempts_before: int = 0

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


def due_queues(session: Session, endpoint_id: str, limit: int) -> list[list[Head]]:
    """The endpoint's oldest due deliveries, as the due prefix of each queue, in order."""
    rows = session.execute(DUE, {"endpoint": endpoint_id, "limit": limit})
    return as_queues(
        (row[9], Head(row[0], row[1], Event(*row[2:9]) if row[2] is not None else None))
        for row in rows
    )


def as_queues(heads: Iterable[tuple[str | None, Head]]) -> list[list[Head]]:
    """Deliveries (their account, the head) in event order as their queues: one per
    account, and tenant-wide events (no account) one of their own."""
    queues: dict[str, list[Head]] = {}
    for account, head in heads:
        queues.setdefault(account or "", []).append(head)
    return list(queues.values())


class WebhookSender:
    """Runs deliveries for endpoints: a few libcurl handles (each keeps its connections
    alive; a delivery cost 5 to 8 times its CPU with urllib3, and httpx twice urllib3's:
    PERFORMANCE.md, bench/webhook_sender.py) and a small thread pool per process, built
    on first use."""

    def __init__(self, settings: Settings, engine: Engine, sessions: sessionmaker[Session]):
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        # Idle handles: a thread takes one for a queue and puts it back after.
        self.handles: queue.SimpleQueue[pycurl.Curl] = queue.SimpleQueue()

    @cached_property
    def pool(self) -> ThreadPoolExecutor:
        threads = self.settings.webhook_sender_threads
        return ThreadPoolExecutor(threads, thread_name_prefix="webhooks")

    def close(self) -> None:
        if "pool" in self.__dict__:
            self.pool.shutdown(wait=True)
        while not self.handles.empty():
            self.handles.get_nowait().close()

    def run(self, endpoint_id: str, seconds: float) -> Run:
        """Deliver the endpoint's due heads, round after round, for about `seconds`."""
        # The lock is a transaction's, held open on a connection of its own for the run
        # and gone with it however the run ends: a session-level lock would stay behind
        # a transaction-mode PgBouncer, on whichever server connection took it. The
        # transaction ends in a commit (it writes nothing), which unlike a rollback keeps
        # the connection's prepared statements (shared.platform.db.autocommit).
        with self.engine.begin() as lock:
            taken = lock.execute(
                text("SELECT pg_try_advisory_xact_lock(:key, hashtext(:endpoint))"),
                {"key": DELIVERY_LOCK, "endpoint": endpoint_id},
            ).scalar()
            if not taken:
                return Run(busy=True)
            return self._rounds(endpoint_id, time.monotonic() + seconds)

    def _rounds(self, endpoint_id: str, deadline: float) -> Run:
        sent = 0
        while True:
            with transaction(self.sessions) as session:
                endpoint = session.get(WebhookEndpoint, endpoint_id)
                if endpoint is None or endpoint.status != EndpointStatus.ACTIVE:
                    return Run(sent)
                queues = due_queues(session, endpoint_id, WINDOW)
                now = session.scalar(select(func.now()))
                assert now is not None
                secrets, url = signing_secrets(endpoint, now), endpoint.url
                wait = None if queues else session.scalar(NEXT_DUE, {"endpoint": endpoint_id})
            if not queues:
                # A retry due before the run's end is waited for here, not by a new task.
                if wait is None or time.monotonic() + float(wait) > deadline:
                    return Run(sent)
                time.sleep(max(0.0, float(wait)))
                continue
            attempts = self.send_round(url, secrets, queues)
            with transaction(self.sessions) as session:
                record_attempts(session, endpoint_id, attempts, self.settings)
            sent += len(attempts)
            if time.monotonic() > deadline:
                return Run(sent, more=True)

    def send_round(self, url: str, secrets: list[str], queues: list[list[Head]]) -> list[Attempt]:
        """Send each queue's deliveries in order, queues side by side, each up to its first
        failure; what was tried."""
        refusal = url_refusal(url, self.settings.webhook_allow_private)
        if refusal is not None:
            return [
                Attempt(queue[0].event_id, None, 0, f"not sent: {refusal}",
                        attempts_before=queue[0].attempts)
                for queue in queues
            ]  # fmt: skip

        def send_queue(queue: list[Head]) -> list[Attempt]:
            handle = self._take_handle()
            try:
                tried = []
                for head in queue:
                    tried.append(self.send(handle, url, secrets, head))
                    if not tried[-1].ok:
                        break
                return tried
            finally:
                self.handles.put(handle)

        return [attempt for tried in self.pool.map(send_queue, queues) for attempt in tried]

    def _take_handle(self) -> pycurl.Curl:
        try:
            return self.handles.get_nowait()
        except queue.Empty:
            return new_handle(self.settings.webhook_timeout, self.settings.webhook_allow_private)

    def send(self, handle: pycurl.Curl, url: str, secrets: list[str], head: Head) -> Attempt:
        """POST one event, signed; what the receiver answered."""
        if head.event is None:
            return Attempt(head.event_id, None, 0, "the event is no longer in the log", True)
        tried = head.attempts
        body = json.dumps(event_document(head.event), separators=(",", ":"))
        msg_id = str(head.event_id)
        timestamp = datetime.now(UTC)
        headers = [
            f"webhook-id: {msg_id}",
            f"webhook-timestamp: {int(timestamp.timestamp())}",
            f"webhook-signature: {sign(secrets, msg_id, timestamp, body)}",
            "content-type: application/json",
            "user-agent: tally-webhooks",
            # No `Expect: 100-continue`, which libcurl sends before a large body (over 1 MiB
            # from 8.0, 1 KiB before) and then waits up to a second for the receiver's 100.
            "expect:",
        ]
        started = time.monotonic()
        try:
            status, start_of_body = post(handle, url, headers, body.encode())
        except pycurl.error as failure:
            code, message = failure.args
            refused, _refused.address = _refused.address, None
            if refused is not None:
                reason = f"not sent: connecting to {refused}, a private or reserved address"
            elif code == pycurl.E_OPERATION_TIMEDOUT:
                reason = f"no answer within {self.settings.webhook_timeout} s"
            else:
                reason = f"curl error {code}: {message}"[:ERROR_MAX]
            latency = int((time.monotonic() - started) * 1000)
            return Attempt(head.event_id, None, latency, reason, attempts_before=tried)
        latency = int((time.monotonic() - started) * 1000)
        error = None if 200 <= status < 300 else f"answered {status}: {start_of_body}"
        return Attempt(head.event_id, status, latency, error, attempts_before=tried)


def new_handle(timeout: float, allow_private: bool) -> pycurl.Curl:
    """A libcurl handle for deliveries: POST over HTTP(S) only, no redirects, no proxy
    from the environment, the whole exchange within `timeout`, and unless private
    addresses are allowed, connections to public ones only."""
    handle = pycurl.Curl()
    handle.setopt(pycurl.POST, 1)
    handle.setopt(pycurl.TIMEOUT_MS, int(timeout * 1000))
    # Timeouts without signals: the handles are used from threads.
    handle.setopt(pycurl.NOSIGNAL, 1)
    # A receiver must not send tally's requests on to another address.
    handle.setopt(pycurl.FOLLOWLOCATION, 0)
    handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    handle.setopt(pycurl.PROXY, "")
    handle.setopt(pycurl.CAINFO, certifi.where())
    if not allow_private:
        handle.setopt(pycurl.OPENSOCKETFUNCTION, _open_public_socket)
    return handle


class _Refusal(threading.local):
    """The address a thread's last connection was refused for (a handle serves one thread
    at a time): `send` names it in the attempt's error."""

    address: str | None = None


_refused = _Refusal()


def _open_public_socket(purpose: int, address: pycurl.CurlSockAddr) -> socket.socket | int:
    """libcurl's socket for each new connection, refused for an address that is not
    public: url_refusal checked the name before the round, and it may resolve elsewhere
    now (DNS rebinding)."""
    host = str(address.addr[0])
    if not public_address(host):
        _refused.address = host
        return int(pycurl.SOCKET_BAD)
    return socket.socket(address.family, address.socktype, address.protocol)


def post(handle: pycurl.Curl, url: str, headers: list[str], body: bytes) -> tuple[int, str]:
    """POST `body`: the answer's status and the start of its body (ERROR_MAX bytes). At
    most ANSWER_READ_MAX bytes of the answer are read: a body read to its end lets the
    connection serve the next delivery, and a longer one is cut off there (its connection
    closed). Raises pycurl.error for an exchange that failed."""
    start, read = b"", 0

    def take(chunk: bytes) -> int | None:
        nonlocal start, read
        start = start or chunk[:ERROR_MAX]
        read += len(chunk)
        return 0 if read > ANSWER_READ_MAX else None  # 0: libcurl ends the transfer

    handle.setopt(pycurl.URL, url)
    handle.setopt(pycurl.HTTPHEADER, headers)
    handle.setopt(pycurl.POSTFIELDS, body)
    handle.setopt(pycurl.WRITEFUNCTION, take)
    try:
        handle.perform()
    except pycurl.error as failure:
        if not (failure.args[0] == pycurl.E_WRITE_ERROR and read > ANSWER_READ_MAX):
            raise
    return int(handle.getinfo(pycurl.RESPONSE_CODE)), start.decode(errors="replace")


def record_attempts(
    session: Session, endpoint_id: str, attempts: list[Attempt], settings: Settings
) -> None:
    """Write a round's outcomes (see NOT_DELIVERED), then the endpoint's health."""
    # Taken before any row: a redelivery holds the lock while it waits for these rows. The
    # round's statements are planned with its arrays, not by a generic plan (DELIVERED).
    session.execute(
        text("""
            SELECT pg_advisory_xact_lock_shared(:key),
                   set_config('plan_cache_mode', 'force_custom_plan', true)
        """),
        {"key": FAN_OUT_LOCK},
    )
    delivered = [attempt for attempt in attempts if attempt.ok]
    if delivered:
        session.execute(DELIVERED, {"endpoint": endpoint_id, **_rows_of(delivered)})
        WEBHOOK_ATTEMPTS.labels("delivered").inc(len(delivered))
    failed = [attempt for attempt in attempts if not attempt.ok]
    backoff = (settings.webhook_backoff_base, settings.webhook_backoff_cap)
    if failed:
        statuses = session.scalars(
            NOT_DELIVERED,
            {
                "endpoint": endpoint_id,
                "window": settings.webhook_retry_hours * 3600,
                **_rows_of(failed),
                "errors": [a.error for a in failed],
                "finals": [a.final for a in failed],
                "delays": [backoff_delay(a.attempts_before + 1, *backoff) for a in failed],
            },
        ).all()
        for status in statuses:
            WEBHOOK_ATTEMPTS.labels("retried" if status == DeliveryStatus.PENDING else status).inc()
    now = session.scalar(select(func.now()))
    assert now is not None
    note_health(session, endpoint_id, attempts, now, settings)


def _rows_of(attempts: list[Attempt]) -> dict[str, object]:
    """The parameters DELIVERED and NOT_DELIVERED share: the attempts' event id range (how
    their rows are found) and their ids, status codes and latencies."""
    ids = [a.event_id for a in attempts]
    return {
        "first": min(ids),
        "last": max(ids),
        "ids": ids,
        "codes": [a.status_code for a in attempts],
        "latencies": [a.latency_ms for a in attempts],
    }


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
