"""Clients that keep posting adjustments through faults, retrying with their idempotency keys.

Besides the reputation load (single adjustments and batches), a few "points" clients
adjust with short expiries, place holds with short timeouts, capture or release some
of them, and spend more than an account has now and then (rejected, 409), so that
beat's lot expiries and hold timeouts and the rejections run through the faults too.

Every request is timed: when its first try was sent and when its final answer came.
A request answered before another was first sent was accepted (committed) before that
one existed, so the checks can order requests across every client by what the clients
saw. Nothing goes wrong silently: each 503, timeout and broken connection is recorded
with its time, its kind and its key, and the key is remembered as retried.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

RETRY_DEADLINE = 120.0
# The longest a lot or a hold of the points load lives: all are due this long after it stops.
POINTS_TIMER_MAX = 3.0
# Every this many operations, and at least this often when answers are slow (a fault),
# a points client spends far more than any account holds: rejected, insufficient_balance.
UNAFFORDABLE_EVERY = 5
UNAFFORDABLE_SECONDS = 0.5
UNAFFORDABLE = -1_000_000


@dataclass
class Accepted:
    key: str
    user_id: int
    amount: int
    request_id: int
    sent_at: float  # the first try
    answered_at: float  # the answer that named the request


@dataclass
class AcceptedBatch:
    key: str
    batch_id: str
    items: list[tuple[int, int]]  # (user_id, amount), in order
    sent_at: float
    answered_at: float


@dataclass
class PointsOperation:
    """A points operation the API accepted: answered 201 or 202, or 409 (rejected, final)."""

    key: str
    kind: str  # adjust, hold, capture, release
    user_id: int
    request_id: int
    status: int
    sent_at: float
    answered_at: float
    amount: int | None = None


@dataclass(frozen=True)
class Trouble:
    """A try that did not get a final answer: a 503, or no answer at all."""

    at: float  # time.monotonic() when it came back
    kind: str  # see trouble_kind, or "503"
    key: str


def trouble_kind(error: requests.RequestException) -> str:
    """What went wrong with a try that got no answer, as a short name."""
    if isinstance(error, requests.ConnectTimeout):
        return "connect_timeout"
    if isinstance(error, requests.ReadTimeout):
        return "read_timeout"
    if isinstance(error, requests.ConnectionError):
        text = repr(error)
        if "refused" in text.lower():
            return "connection_refused"  # nobody listening
        # Aborted, reset, closed without an answer: the server went away mid-request.
        return "connection_cut"
    return type(error).__name__


@dataclass
class Load:
    """Client threads posting adjustments until stopped; every answer is recorded."""

    base_url: str
    token: str
    user_ids: list[int]
    threads: int = 6
    # Users and client threads of the points load (none: no points load).
    points_user_ids: list[int] = field(default_factory=list)
    points_threads: int = 2
    accepted: list[Accepted] = field(default_factory=list)
    batches: list[AcceptedBatch] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    missing_retry_after: int = 0
    replays_mismatched: int = 0
    points: list[PointsOperation] = field(default_factory=list)
    points_statuses: Counter[int] = field(default_factory=Counter)
    # Answers a points client did not expect (any 4xx but 409 and the one below).
    points_problems: list[str] = field(default_factory=list)
    # Keys of holds and earns whose retry came after their expires_at: 400 "must be in the
    # future" although the first try may have been recorded (see _points_until_accepted).
    refused_past_expiry: list[str] = field(default_factory=list)
    # Every 503 and every try without an answer, and the keys they happened to.
    troubles: list[Trouble] = field(default_factory=list)
    retried_keys: set[str] = field(default_factory=set)
    # Retried keys whose final answer was a replay: the request had been recorded by a
    # try whose answer the client never got.
    replayed_after_trouble: set[str] = field(default_factory=set)
    # Keys that kept failing until RETRY_DEADLINE (the checks want none).
    abandoned: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        for number in range(self.threads):
            self._spawn(self._client, number)
        self._spawn(self._bulk_client)
        for number in range(self.points_threads if self.points_user_ids else 0):
            self._spawn(self._points_client, number)

    def _spawn(self, target: Any, *args: Any) -> None:
        worker = threading.Thread(target=target, args=args, daemon=True)
        worker.start()
        self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=RETRY_DEADLINE + 30)

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for a in self.accepted if start <= a.answered_at <= end)

    def transport_errors(self) -> Counter[str]:
        """How many tries got no answer, by kind (503s apart)."""
        return Counter(t.kind for t in self.troubles if t.kind != "503")

    # One try, and the retry loop every client uses.

    def _try(
        self,
        http: requests.Session,
        path: str,
        key: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: float,
        statuses: Counter[int],
    ) -> requests.Response | None:
        """POST once; record the answer's status, or the trouble if there was one."""
        try:
            response = http.post(
                self.base_url + path,
                json=body,
                headers={"Idempotency-Key": key, **headers},
                timeout=timeout,
            )
        except requests.RequestException as error:
            self._trouble(trouble_kind(error), key)
            return None
        with self._lock:
            statuses[response.status_code] += 1
            if response.status_code == 503 and "Retry-After" not in response.headers:
                self.missing_retry_after += 1
        if response.status_code == 503:
            self._trouble("503", key)
        return response

    def _trouble(self, kind: str, key: str) -> None:
        with self._lock:
            self.troubles.append(Trouble(time.monotonic(), kind, key))
            self.retried_keys.add(key)

    def _answered(self, key: str, response: requests.Response) -> None:
        """Note a final answer; a replay after a trouble means a lost answer was recovered."""
        if response.headers.get("Idempotent-Replayed") == "true":
            with self._lock:
                if key in self.retried_keys:
                    self.replayed_after_trouble.add(key)

    def _abandon(self, key: str) -> None:
        with self._lock:
            self.abandoned.append(key)

    # The reputation load: single adjustments, and batches of 200.

    def _until_accepted(self, http: requests.Session, key: str, body: dict) -> int | None:
        """Retry with the same key until the API accepts it (as a careful client would)."""
        deadline = time.monotonic() + RETRY_DEADLINE
        delay = 0.05
        while time.monotonic() < deadline:
            response = self._try(
                http, "/api/v2/score/", key, body, {"Prefer": "wait=2"}, 15, self.statuses
            )
            if response is not None and response.status_code in (201, 202):
                self._answered(key, response)
                return int(response.headers["Location"].rsplit("/", 1)[1])
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        self._abandon(key)
        return None

    def _client(self, number: int) -> None:
        rng = random.Random(number)
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {self.token}"
            sequence = 0
            while not self._stop.is_set():
                sequence += 1
                key = f"chaos-{number}-{sequence}"
                user_id = rng.choice(self.user_ids)
                amount = rng.choice([-3, -1, 1, 2, 5, 10])
                body = {"user_id": user_id, "score": amount, "comment": key}
                sent_at = time.monotonic()
                request_id = self._until_accepted(http, key, body)
                if request_id is None:
                    return
                with self._lock:
                    self.accepted.append(
                        Accepted(key, user_id, amount, request_id, sent_at, time.monotonic())
                    )
                if sequence % 10 == 0:
                    # A retry that reuses the key must name the same request.
                    again = self._until_accepted(http, key, body)
                    if again != request_id:
                        with self._lock:
                            self.replays_mismatched += 1

    def _bulk_client(self) -> None:
        """Batches of 200 awards, each retried with its batch key until accepted."""
        rng = random.Random(1000)
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {self.token}"
            sequence = 0
            while not self._stop.is_set():
                sequence += 1
                key = f"chaos-batch-{sequence}"
                items = [(rng.choice(self.user_ids), rng.choice([1, 2, 3])) for _ in range(200)]
                body = {
                    "items": [{"user_id": u, "score": a} for u, a in items],
                    "comment": key,
                }
                sent_at = time.monotonic()
                batch_id = self._batch_until_accepted(http, key, body)
                if batch_id is None:
                    return
                with self._lock:
                    self.batches.append(
                        AcceptedBatch(key, batch_id, items, sent_at, time.monotonic())
                    )
                time.sleep(0.2)

    def _batch_until_accepted(self, http: requests.Session, key: str, body: dict) -> str | None:
        deadline = time.monotonic() + RETRY_DEADLINE
        while time.monotonic() < deadline:
            response = self._try(http, "/api/v2/score/bulk", key, body, {}, 30, self.statuses)
            if response is not None and response.status_code == 202:
                self._answered(key, response)
                return str(response.json()["id"])
            time.sleep(0.2)
        self._abandon(key)
        return None

    # The points load.

    def _points_client(self, number: int) -> None:
        """Adjust (expiring points, spends some refused), hold, capture and release.

        Each thread first gives every points user 100 points that never expire (and asks
        for a spend that is refused); later it closes only some of its holds, so that
        others are left to time out, and every UNAFFORDABLE_EVERY operations (or
        UNAFFORDABLE_SECONDS) it spends more than any account has (refused:
        insufficient_balance).
        """
        rng = random.Random(2000 + number)
        own_holds: list[tuple[int, int, int]] = []  # (user, hold id, amount)
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {self.token}"
            for user_id in self.points_user_ids:
                # 100 points for good, and a spend no account can afford: refused.
                for amount in (100, UNAFFORDABLE):
                    key = f"chaos-points-{number}-seed-{user_id}-{amount}"
                    body: dict[str, Any] = {"amount": amount, "reason": key}
                    self._points_record(http, key, "adjust", user_id, "/adjust", body)
            sequence = 0
            unaffordable_at = time.monotonic()
            while not self._stop.is_set():
                sequence += 1
                key = f"chaos-points-{number}-{sequence}"
                user_id = rng.choice(self.points_user_ids)
                roll = rng.random()
                path, kind = "/adjust", "adjust"
                body = {"reason": key}
                overdue = time.monotonic() - unaffordable_at > UNAFFORDABLE_SECONDS
                if sequence % UNAFFORDABLE_EVERY == 0 or overdue:
                    body["amount"] = UNAFFORDABLE
                    unaffordable_at = time.monotonic()
                elif roll < 0.35:
                    body["amount"] = rng.randint(5, 30)
                    if rng.random() < 0.7:
                        body["expires_at"] = _in(rng.uniform(1.0, POINTS_TIMER_MAX - 0.5))
                elif roll < 0.6:
                    # Now and then far more than the account has: refused.
                    big = rng.random() < 0.15
                    body["amount"] = -(rng.randint(300, 900) if big else rng.randint(1, 25))
                elif roll < 0.88 or not own_holds:
                    path, kind = "/holds", "hold"
                    body["amount"] = rng.randint(5, 40)
                    body["expires_at"] = _in(rng.uniform(1.5, POINTS_TIMER_MAX))
                else:
                    user_id, hold_id, amount = own_holds.pop(rng.randrange(len(own_holds)))
                    kind = rng.choice(["capture", "release"])
                    path = f"/holds/{hold_id}/{kind}"
                    if kind == "capture" and rng.random() < 0.5:
                        body["amount"] = rng.randint(1, amount)
                accepted = self._points_record(http, key, kind, user_id, path, body)
                if accepted is not None and kind == "hold" and accepted.status != 409:
                    own_holds.append((user_id, accepted.request_id, body["amount"]))
                time.sleep(rng.uniform(0.01, 0.04))

    def _points_record(
        self,
        http: requests.Session,
        key: str,
        kind: str,
        user_id: int,
        path: str,
        body: dict[str, Any],
    ) -> PointsOperation | None:
        accepted = self._points_until_accepted(http, key, kind, user_id, path, body)
        if accepted is not None:
            with self._lock:
                self.points.append(accepted)
        return accepted

    def _points_until_accepted(
        self,
        http: requests.Session,
        key: str,
        kind: str,
        user_id: int,
        path: str,
        body: dict[str, Any],
    ) -> PointsOperation | None:
        """Retry with the same key and body until the API accepts the operation."""
        # Holds and their closing wait for the worker; adjustments ask for an early 202.
        prefer = "respond-async" if kind == "adjust" else "wait=2"
        sent_at = time.monotonic()
        deadline = sent_at + RETRY_DEADLINE
        delay = 0.05
        while time.monotonic() < deadline:
            response = self._try(
                http,
                f"/admin/points/{user_id}{path}",
                key,
                body,
                {"Prefer": prefer},
                15,
                self.points_statuses,
            )
            if response is not None:
                status = response.status_code
                if status in (201, 202, 409):
                    self._answered(key, response)
                    request_id = int(response.headers["Location"].rsplit("/", 1)[1])
                    return PointsOperation(
                        key,
                        kind,
                        user_id,
                        request_id,
                        status,
                        sent_at,
                        time.monotonic(),
                        body.get("amount"),
                    )
                if status == 400 and "expires_at" in body and _past(body["expires_at"]):
                    # A retry of a hold or an earn past its expires_at is refused, even when
                    # the first try was recorded: the verification looks the key up.
                    with self._lock:
                        self.refused_past_expiry.append(key)
                    return None
                if 400 <= status < 500 and status != 429:
                    with self._lock:
                        self.points_problems.append(f"{key} {status} {response.text[:200]}")
                    return None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        self._abandon(key)
        with self._lock:
            self.points_problems.append(f"{key} never accepted")
        return None


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _past(timestamp: str) -> bool:
    return datetime.fromisoformat(timestamp) <= datetime.now(UTC)
