"""Clients that keep posting adjustments through faults, retrying with their idempotency keys."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import requests

RETRY_DEADLINE = 120.0


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
class Load:
    """Client threads posting single adjustments until stopped; every answer is recorded."""

    base_url: str
    token: str
    user_ids: list[int]
    threads: int = 6
    accepted: list[Accepted] = field(default_factory=list)
    batches: list[AcceptedBatch] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    missing_retry_after: int = 0
    replays_mismatched: int = 0
    sent_by_thread: dict[tuple[int, int], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )

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
