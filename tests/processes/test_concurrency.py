"""Through the HTTP API, with two worker processes: exact balances under concurrency."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Account, AdjustmentRequest, LedgerEntry, Role, User
from tests.factories import Factory, assert_ledger_consistent
from tests.processes.conftest import Stack

pytestmark = pytest.mark.processes

THREADS = 8
PER_THREAD = 250


def _request_id(response: requests.Response) -> int:
    return int(response.headers["Location"].rsplit("/", 1)[1])


def _post_many(
    stack: Stack,
    token: str,
    user_ids: list[int],
    accepted: dict[int, list[int]],
    sent: dict[tuple[int, int], list[int]],
) -> list[str]:
    """8 threads x 250 adjustments spread over `user_ids`; return any unexpected answers."""
    problems: list[str] = []
    lock = threading.Lock()

    def client(thread: int) -> None:
        rng = random.Random(thread)
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {token}"
            for n in range(PER_THREAD):
                user_id = rng.choice(user_ids)
                amount = rng.choice([-3, -1, 1, 2, 5, 10])
                # Half the clients wait for the 201, half ask for an early 202.
                prefer = "respond-async" if thread % 2 else "wait=10"
                response = http.post(
                    stack.base_url + "/api/v2/score/",
                    json={"user_id": user_id, "score": amount, "comment": f"t{thread} n{n}"},
                    headers={"Prefer": prefer, "Idempotency-Key": f"t{thread}-n{n}"},
                    timeout=30,
                )
                with lock:
                    if response.status_code in (201, 202):
                        accepted[user_id].append(amount)
                        sent[(thread, user_id)].append(_request_id(response))
                    else:
                        problems.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return problems


def _wait_until_applied(sessions: sessionmaker[Session], tenant_id: str, total: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with sessions() as session:
            pending = session.scalar(
                select(func.count()).where(
                    AdjustmentRequest.tenant_id == tenant_id,
                    AdjustmentRequest.status.in_(("queued", "processing")),
                )
            )
        if pending == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{pending} of {total} requests still pending")


def _check_ledger(
    sessions: sessionmaker[Session],
    tenant_id: str,
    accepted: dict[int, list[int]],
    sent: dict[tuple[int, int], list[int]],
) -> None:
    with sessions() as session:
        requests_count = session.scalar(
            select(func.count()).where(AdjustmentRequest.tenant_id == tenant_id)
        )
        entries = session.scalar(select(func.count()).where(LedgerEntry.tenant_id == tenant_id))
        assert requests_count == entries == THREADS * PER_THREAD
        duplicated = session.scalar(
            select(func.count()).select_from(
                select(LedgerEntry.request_id)
                .where(LedgerEntry.tenant_id == tenant_id)
                .group_by(LedgerEntry.request_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
        assert duplicated == 0
        for user_id, amounts in accepted.items():
            account = session.scalars(select(Account).where(Account.user_id == user_id)).one()
            assert account.balance == sum(amounts), f"user {user_id}"
            assert_ledger_consistent(session, account.id)
        # Acceptance order: what one client had accepted before sending the next
        # adjustment to the same account is applied before it.
        entry_of = dict(
            session.execute(
                select(LedgerEntry.request_id, LedgerEntry.id).where(
                    LedgerEntry.tenant_id == tenant_id
                )
            ).all()
        )
        for request_ids in sent.values():
            ledger_ids = [entry_of[request_id] for request_id in request_ids]
            assert ledger_ids == sorted(ledger_ids)


def _run(stack: Stack, factory: Factory, sessions, users: int) -> None:
    caller = factory.caller(Role.MODERATOR)
    targets: list[User] = [factory.user() for _ in range(users)]
    accepted: dict[int, list[int]] = defaultdict(list)
    sent: dict[tuple[int, int], list[int]] = defaultdict(list)
    problems = _post_many(stack, caller.token, [u.id for u in targets], accepted, sent)
    assert problems == [], stack.logs()
    _wait_until_applied(sessions, factory.tenant_id, THREADS * PER_THREAD)
    _check_ledger(sessions, factory.tenant_id, accepted, sent)


def test_2000_adjustments_to_one_account(stack: Stack, stack_factory, stack_sessions) -> None:
    _run(stack, stack_factory, stack_sessions, users=1)


def test_2000_adjustments_over_50_accounts(stack: Stack, stack_factory, stack_sessions) -> None:
    _run(stack, stack_factory, stack_sessions, users=50)
