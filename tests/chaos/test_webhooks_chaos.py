"""Webhooks through a bad receiver, on the real stack (the API, beat's pump, two workers
sharing the webhooks lane): the receiver is down for a while (TALLY_CHAOS_WEBHOOK_DOWN
seconds, 60 by default), answers 500 to half the requests and sometimes answers only
after tally's timeout, while adjustments flow. Every event must arrive at least once,
each account's in account_seq order, duplicates only under the same webhook-id, and
every delivery must end delivered. Run with -s to see the counts.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from tally_client import verify_webhook

from shared.events.webhooks import EndpointInput, create_endpoint
from shared.models import Role
from shared.platform.db import transaction
from tests.chaos.conftest import Servers, throwaway_servers
from tests.events.receiver import Behaviour, Receiver
from tests.factories import Caller, Factory
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.chaos

DOWN_SECONDS = float(os.environ.get("TALLY_CHAOS_WEBHOOK_DOWN", "60"))
LOAD_AROUND_SECONDS = 3.0
USERS = 6
# Each user gets an adjustment about this often (three events each).
ADJUST_EVERY = 2.5
TIMEOUT = 0.5
# A late answer comes this long after the request: past the timeout.
LATE = TIMEOUT + 0.3
DELIVERED_LIMIT = 120.0

UNDELIVERED = text("""
    SELECT
        (SELECT count(*) FROM adjustment_requests
         WHERE tenant_id = :t AND status IN ('queued', 'processing')) AS requests,
        (SELECT count(*) FROM events e WHERE e.tenant_id = :t AND (e.id IS NULL OR NOT EXISTS (
            SELECT 1 FROM webhook_deliveries d
            WHERE d.event_id = e.id AND d.status = 'delivered'))) AS events
""")


@dataclass
class HookRig:
    stack: Stack
    sessions: sessionmaker[Session]
    caller: Caller
    user_ids: list[int]
    endpoint_id: str
    secret: str
    receiver: Receiver


@pytest.fixture
def hook_rig(tmp_path: Path) -> Iterator[HookRig]:
    with throwaway_servers(tmp_path) as servers:
        yield from _hook_rig(tmp_path, servers)


def _hook_rig(tmp_path: Path, servers: Servers) -> Iterator[HookRig]:
    postgres, redis, sessions = servers.postgres, servers.redis, servers.sessions
    factory = Factory(sessions)
    caller = factory.caller(Role.MODERATOR)
    admin = factory.caller(Role.ADMIN)
    receiver = Receiver()
    receiver.start()
    with transaction(sessions) as session:
        endpoint = create_endpoint(
            session, factory.tenant_id, admin.user_id, EndpointInput(url=receiver.url), True
        )
        endpoint_id, secret = endpoint.id, endpoint.secret
    env = {
        "TALLY_WEBHOOK_ALLOW_PRIVATE": "1",
        "TALLY_WEBHOOK_TIMEOUT": str(TIMEOUT),
        "TALLY_WEBHOOK_BACKOFF_BASE": "0.05",
        "TALLY_WEBHOOK_BACKOFF_CAP": "0.5",
    }
    try:
        with running_stack(
            tmp_path, postgres.url, redis.url, env, workers=("worker1", "worker2")
        ) as stack:
            yield HookRig(stack, sessions, caller, [factory.user().id for _ in range(USERS)],
                          endpoint_id, secret, receiver)  # fmt: skip
    finally:
        receiver.stop()


def flaky(seed: int) -> Behaviour:
    """Half the requests answered 500; one in twenty answered 200 after the timeout."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def answer(headers: dict[str, str], body: bytes) -> tuple[int, float]:
        with lock:
            roll = rng.random()
        if roll < 0.5:
            return 500, 0.0
        if roll < 0.55:
            return 200, LATE
        return 200, 0.0

    return answer


class AdjustmentLoad:
    """One thread per user posting an adjustment every ADJUST_EVERY seconds until stopped."""

    def __init__(self, rig: HookRig) -> None:
        self.rig = rig
        self.stopping = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.threads = [
            threading.Thread(target=self._post, args=(user_id,), daemon=True)
            for user_id in rig.user_ids
        ]

    def _post(self, user_id: int) -> None:
        with requests.Session() as http:
            while not self.stopping.wait(ADJUST_EVERY * random.uniform(0.5, 1.5)):
                answer = http.post(
                    self.rig.stack.base_url + "/api/v2/score/",
                    json={"user_id": user_id, "score": 1, "comment": "chaos"},
                    headers={"Authorization": f"Bearer {self.rig.caller.token}"},
                    timeout=10,
                )
                self.statuses[answer.status_code] += 1

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()


def _wait_delivered(rig: HookRig) -> float:
    started = time.monotonic()
    while True:
        with rig.sessions() as session:
            left = session.execute(UNDELIVERED, {"t": rig.caller.tenant_id}).one()
        if left.requests == left.events == 0:
            return time.monotonic() - started
        assert time.monotonic() - started < DELIVERED_LIMIT, f"{left}\n{rig.stack.logs()}"
        time.sleep(0.5)


def test_every_event_arrives_in_order_per_account_through_a_bad_receiver(
    hook_rig: HookRig,
) -> None:
    rig, receiver = hook_rig, hook_rig.receiver
    receiver.behaviour = flaky(seed=7)
    load = AdjustmentLoad(rig)
    load.start()
    time.sleep(LOAD_AROUND_SECONDS)
    receiver.stop()
    down_at = time.monotonic()
    time.sleep(DOWN_SECONDS)
    receiver.start()
    up_at = time.monotonic()
    time.sleep(LOAD_AROUND_SECONDS)
    load.stop()
    recovery = _wait_delivered(rig)

    with rig.sessions() as session:
        events = session.execute(
            text("SELECT id, account_id, account_seq FROM events WHERE tenant_id = :t"),
            {"t": rig.caller.tenant_id},
        ).all()
        attempts = session.scalar(
            text("SELECT sum(attempts) FROM webhook_deliveries WHERE endpoint_id = :e"),
            {"e": rig.endpoint_id},
        )
    received = receiver.requests()
    by_id: dict[str, set[bytes]] = defaultdict(set)
    arrivals: dict[str, list[int]] = defaultdict(list)
    for request in received:
        by_id[request.webhook_id].add(request.body)
        event = request.event
        assert event["id"] == int(request.webhook_id)
        if event["account_id"] is not None:
            arrivals[event["account_id"]].append(event["account_seq"])
    for request in random.sample(received, min(200, len(received))):
        verify_webhook(request.body, request.headers, rig.secret)

    # At least once: every event arrived; a duplicate is the same body under the same id.
    assert {str(event.id) for event in events} <= set(by_id)
    assert all(len(bodies) == 1 for bodies in by_id.values())
    assert not [r for r in received if down_at < r.at < up_at]
    # In order per account: an account's next event comes only after the earlier one got
    # its 2xx, so the seqs arrive non-decreasing (a retry repeats one), without a gap.
    for account, seqs in arrivals.items():
        assert seqs == sorted(seqs), f"account {account} out of order: {seqs}"
        assert sorted(set(seqs)) == list(range(1, max(seqs) + 1))
    answered = Counter(r.webhook_id for r in received if r.status == 200)
    duplicates = sum(count - 1 for count in answered.values())
    statuses = Counter(r.status for r in received)
    print(
        f"\nwebhooks: {len(events)} events of {len(arrivals)} accounts, adjustments "
        f"{dict(load.statuses)}; receiver down {DOWN_SECONDS:.0f} s; {len(received)} requests "
        f"received ({dict(statuses)}), {duplicates} answered 200 twice or more, {attempts} "
        f"attempts recorded;"
        f" all delivered {recovery:.1f} s after the load stopped"
    )
    assert len(events) > USERS * 3 and statuses[500] > 0 and duplicates > 0
