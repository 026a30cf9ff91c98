"""A worker whose Redis lock expired before it commits cannot make a balance wrong."""

from __future__ import annotations

import threading
import time

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from shared.flow.locks import AccountLocks
from shared.flow.processing import drain_accounts
from shared.ledger.apply import apply_pending
from shared.platform.keys import RedisKeys
from tests.factories import Caller, Factory, assert_ledger_consistent, queue_requests

KEYS = RedisKeys("tests")


def test_expired_lock_holder_and_its_successor_serialise_on_the_account_row(
    factory: Factory, moderator: Caller, sessions: sessionmaker[Session], redis: Redis
) -> None:
    user = factory.user()
    account_id, first_ids = queue_requests(sessions, moderator, user.id, [10, 20, 30])

    # Worker A takes the lock with a short TTL and applies, but has not committed yet.
    lock = AccountLocks(redis, KEYS.locks([account_id]), ttl=0.5)
    assert lock.acquire(wait=0)
    slow = sessions()
    slow.begin()
    assert len(apply_pending(slow, [account_id], limit=100).outcomes) == 3

    # More requests arrive, and A's lock expires while A is still working.
    _, later_ids = queue_requests(sessions, moderator, user.id, [-5, 7])
    time.sleep(0.7)
    assert redis.get(KEYS.lock(account_id)) is None

    # Worker B now gets the lock and drains the account concurrently.
    outcomes: list[int] = []
    successor = threading.Thread(
        target=lambda: outcomes.extend(
            o.request_id
            for o in drain_accounts(
                [account_id],
                redis=redis,
                keys=KEYS,
                channel=KEYS.done_channel("tests"),
                sessions=sessions,
                lock_ttl=5,
                lock_wait=5,
                chunk=100,
            ).outcomes
        )
    )
    successor.start()
    time.sleep(0.5)
    assert successor.is_alive(), "B must wait on A's row lock, not read a stale balance"

    slow.commit()
    slow.close()
    successor.join(timeout=10)
    assert lock.release() == 1  # A's lock had expired and been taken by B

    assert outcomes == later_ids  # B applied only what A had not
    with sessions() as session:
        assert_ledger_consistent(session, account_id)
        from tests.factories import ledger_of

        entries = ledger_of(session, user.id)
        assert [e.request_id for e in entries] == first_ids + later_ids
        assert entries[-1].balance_after == 62


def test_account_locks_are_all_or_none(redis: Redis) -> None:
    first = AccountLocks(redis, KEYS.locks(["acc-a", "acc-b"]), ttl=5)
    assert first.acquire(wait=0)
    overlapping = AccountLocks(redis, KEYS.locks(["acc-b", "acc-c"]), ttl=5)
    assert not overlapping.acquire(wait=0.05)
    assert redis.get(KEYS.lock("acc-c")) is None  # it kept none while it could not have all
    assert first.release() == 0
    assert overlapping.acquire(wait=0)
    assert overlapping.release() == 0
