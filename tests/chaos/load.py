"""Clients that keep posting adjustments through faults, retrying with their idempotency keys.

Besides the reputation load (single adjustments and batches), a few "points" clients
adjust with short expiries, place holds with short timeouts and capture or release
some of them, so that beat's lot expiries and hold timeouts run through the faults too.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

RETRY_DEADLINE = 120.0
# The longest a lot or a hold of the points load lives: all are due this long after it stops.
POINTS_TIMER_MAX = 3.0


@dataclass
class Accepted:
    key: str
    user_id: int
    amount: int
    request_id: int
    accepted_at: float


@dataclass
class AcceptedBatch:
    key: str
    batch_id: str
    items: list[tuple[int, int]]  # (user_id, amount), in order


@dataclass
class PointsOperation:
    """A points operation the API accepted: answered 201 or 202, or 409 (rejected, final)."""

    key: str
    kind: str  # adjust, hold, capture, release
    user_id: int
    request_id: int
    status: int


@dataclass
class Load:
    """Client threads posting single adjustments until stopped; every answer is recorded."""

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
    sent_by_thread: dict[tuple[int, int], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    points: list[PointsOperation] = field(default_factory=list)
    points_statuses: Counter[int] = field(default_factory=Counter)
    # Answers a points client did not expect (any 4xx but 409 and the one below).
    points_problems: list[str] = field(default_factory=list)
    # Keys of holds whose retry came after their timeout: 400 "expires_at must be in the
    # future" although the first try may have been recorded (see _points_until_accepted).
    holds_refused_on_retry: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        for number in range(self.threads):
            worker = threading.Thread(target=self._client, args=(number,), daemon=True)
            worker.start()
            self._workers.append(worker)
        bulk = threading.Thread(target=self._bulk_client, daemon=True)
        bulk.start()
        self._workers.append(bulk)
        for number in range(self.points_threads if self.points_user_ids else 0):
            points = threading.Thread(target=self._points_client, args=(number,), daemon=True)
            points.start()
            self._workers.append(points)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=RETRY_DEADLINE + 30)

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for a in self.accepted if start <= a.accepted_at <= end)

    def _post(self, http: requests.Session, key: str, body: dict) -> requests.Response | None:
        try:
            response = http.post(
                self.base_url + "/api/v2/score/",
                json=body,
                headers={"Idempotency-Key": key, "Prefer": "wait=2"},
                timeout=15,
            )
        except requests.RequestException:
            return None
        with self._lock:
            self.statuses[response.status_code] += 1
            if response.status_code == 503 and "Retry-After" not in response.headers:
                self.missing_retry_after += 1
        return response

    def _until_accepted(self, http: requests.Session, key: str, body: dict) -> int | None:
        """Retry with the same key until the API accepts it (as a careful client would)."""
        deadline = time.monotonic() + RETRY_DEADLINE
        delay = 0.05
        while time.monotonic() < deadline:
            response = self._post(http, key, body)
            if response is not None and response.status_code in (201, 202):
                return int(response.headers["Location"].rsplit("/", 1)[1])
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
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
                request_id = self._until_accepted(http, key, body)
                assert request_id is not None, f"{key} was never accepted"
                with self._lock:
                    self.accepted.append(
                        Accepted(key, user_id, amount, request_id, time.monotonic())
                    )
                    self.sent_by_thread[(number, user_id)].append(request_id)
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
                batch_id = self._batch_until_accepted(http, key, body)
                assert batch_id is not None, f"{key} was never accepted"
                with self._lock:
                    self.batches.append(AcceptedBatch(key, batch_id, items))
                time.sleep(0.2)

    def _batch_until_accepted(self, http: requests.Session, key: str, body: dict) -> str | None:
        deadline = time.monotonic() + RETRY_DEADLINE
        while time.monotonic() < deadline:
            try:
                response = http.post(
                    self.base_url + "/api/v2/score/bulk",
                    json=body,
                    headers={"Idempotency-Key": key},
                    timeout=30,
                )
            except requests.RequestException:
                time.sleep(0.2)
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
            if response.status_code == 202:
                return str(response.json()["id"])
            time.sleep(0.2)
        return None

    def _points_client(self, number: int) -> None:
        """Adjust (expiring points, spends some refused), hold, capture and release.

        Each thread first gives every points user 100 points that never expire (and asks
        for a spend that is refused); later it closes only some of its holds, so that
        others are left to time out.
        """
        rng = random.Random(2000 + number)
        own_holds: list[tuple[int, int, int]] = []  # (user, hold id, amount)
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {self.token}"
            for user_id in self.points_user_ids:
                # 100 points for good, and a spend no account can afford: refused.
                for amount in (100, -1_000_000):
                    key = f"chaos-points-{number}-seed-{user_id}-{amount}"
                    body: dict[str, Any] = {"amount": amount, "reason": key}
                    self._points_record(http, key, "adjust", user_id, "/adjust", body)
            sequence = 0
            while not self._stop.is_set():
                sequence += 1
                key = f"chaos-points-{number}-{sequence}"
                user_id = rng.choice(self.points_user_ids)
                roll = rng.random()
                path, kind = "/adjust", "adjust"
                body = {"reason": key}
                if roll < 0.35:
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
        deadline = time.monotonic() + RETRY_DEADLINE
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                response = http.post(
                    f"{self.base_url}/admin/points/{user_id}{path}",
                    json=body,
                    headers={"Idempotency-Key": key, "Prefer": prefer},
                    timeout=15,
                )
            except requests.RequestException:
                response = None
            if response is not None:
                status = response.status_code
                with self._lock:
                    self.points_statuses[status] += 1
                    if status == 503 and "Retry-After" not in response.headers:
                        self.missing_retry_after += 1
                if status in (201, 202, 409):
                    request_id = int(response.headers["Location"].rsplit("/", 1)[1])
                    return PointsOperation(key, kind, user_id, request_id, status)
                if status == 400 and kind == "hold" and _past(body["expires_at"]):
                    # A retry past the hold's timeout is refused, even when the first try
                    # was recorded: the verification looks the key up.
                    with self._lock:
                        self.holds_refused_on_retry.append(key)
                    return None
                if 400 <= status < 500 and status != 429:
                    with self._lock:
                        self.points_problems.append(f"{key} {status} {response.text[:200]}")
                    return None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        with self._lock:
            self.points_problems.append(f"{key} never accepted")
        return None


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _past(timestamp: str) -> bool:
    return datetime.fromisoformat(timestamp) <= datetime.now(UTC)
