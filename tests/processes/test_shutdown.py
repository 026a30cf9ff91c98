"""SIGTERM to a busy worker: it finishes what it holds, exits, and nothing is lost."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.ledger.reconcile import reconcile
from shared.models import Account, AdjustmentRequest, LedgerEntry, Role
from tests.factories import Factory
from tests.stack import Stack

pytestmark = pytest.mark.processes


# Small chunks: the worker needs many transactions for the load, so SIGTERM finds it
# in the middle of the work rather than before or after it.
APPLY_CHUNK = 10
LOAD = 900


@pytest.fixture
def stack_env() -> dict[str, str]:
    return {"TALLY_APPLY_CHUNK": str(APPLY_CHUNK)}


def _counts(sessions: sessionmaker[Session], tenant_id: str) -> dict[str, int]:
    with sessions() as session:
        rows = session.execute(
            select(AdjustmentRequest.status, func.count())
            .where(AdjustmentRequest.tenant_id == tenant_id)
            .group_by(AdjustmentRequest.status)
        ).all()
    return dict(rows)


def _pending(counts: dict[str, int]) -> int:
    return counts.get("queued", 0) + counts.get("processing", 0)


def test_sigterm_to_a_busy_worker_loses_nothing(
    stack_without_workers: Stack,
    stack_factory: Factory,
    stack_sessions: sessionmaker[Session],
) -> None:
    stack = stack_without_workers
    tenant_id = stack_factory.tenant_id
    caller = stack_factory.caller(Role.MODERATOR)
    users = [stack_factory.user() for _ in range(30)]
    expected: dict[int, int] = defaultdict(int)
    with requests.Session() as http:
        for n in range(LOAD):
            user = users[n % len(users)]
            response = http.post(
                stack.base_url + "/api/v2/score/",
                json={"user_id": user.id, "score": 1 + n % 3, "comment": f"n{n}"},
                headers={"Authorization": f"Bearer {caller.token}", "Prefer": "respond-async"},
                timeout=30,
            )
            assert response.status_code == 202
            expected[user.id] += 1 + n % 3

    stack.start_worker("worker1")
    deadline = time.monotonic() + 60
    while _counts(stack_sessions, tenant_id).get("completed", 0) == 0:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.01)
    # The worker is busy: it has applied some, and (counted right after the signal, so
    # no fewer than when it was sent) many are still pending.
    before = _counts(stack_sessions, tenant_id)
    busy = stack.processes.pop("worker1")
    os.kill(busy.pid, signal.SIGTERM)
    after = _counts(stack_sessions, tenant_id)
    assert busy.wait(timeout=60) == 0, stack.logs()
    assert before.get("completed", 0) > 0, before
    assert _pending(after) > 0, f"the worker had drained everything before SIGTERM: {after}"

    counts = _counts(stack_sessions, tenant_id)
    assert counts.get("processing", 0) == 0
    with stack_sessions() as session:
        assert reconcile(session).violations == []  # no half-applied request

    stack.start_worker("worker2")
    deadline = time.monotonic() + 90
    while _counts(stack_sessions, tenant_id).get("completed", 0) < LOAD:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)
    assert _counts(stack_sessions, tenant_id) == {"completed": LOAD}
    with stack_sessions() as session:
        # Exactly once: one entry per request, the one its row names.
        entries = dict(
            session.execute(
                select(LedgerEntry.request_id, func.count())
                .where(LedgerEntry.tenant_id == tenant_id)
                .group_by(LedgerEntry.request_id)
            ).all()
        )
        assert len(entries) == LOAD
        assert set(entries.values()) == {1}
        linked = session.scalar(
            select(func.count())
            .select_from(AdjustmentRequest)
            .join(LedgerEntry, LedgerEntry.id == AdjustmentRequest.ledger_entry_id)
            .where(
                AdjustmentRequest.tenant_id == tenant_id,
                LedgerEntry.request_id == AdjustmentRequest.id,
            )
        )
        assert linked == LOAD
        for user in users:
            account = session.scalars(select(Account).where(Account.user_id == user.id)).one()
            assert account.balance == expected[user.id]
        assert reconcile(session).violations == []


def test_sigterm_to_the_api_finishes_requests_in_flight(
    stack_without_workers: Stack, stack_factory: Factory
) -> None:
    import threading

    stack = stack_without_workers
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    answers: list[int] = []

    def slow_post() -> None:
        # No worker runs, so this request waits its full 3 s before answering 202.
        response = requests.post(
            stack.base_url + "/api/v2/score/",
            json={"user_id": user.id, "score": 1, "comment": "in flight"},
            headers={"Authorization": f"Bearer {caller.token}", "Prefer": "wait=3"},
            timeout=30,
        )
        answers.append(response.status_code)

    in_flight = threading.Thread(target=slow_post)
    in_flight.start()
    time.sleep(1)
    api = stack.processes.pop("api")
    os.kill(api.pid, signal.SIGTERM)
    in_flight.join(timeout=30)
    assert answers == [202]
    assert api.wait(timeout=30) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.base_url + "/healthz", timeout=2)
    assert caller.token not in stack.logs()
