"""The outbox relay: a request whose Celery message is lost is still applied."""

from __future__ import annotations

import json
import time

from celery import Task
from celery.contrib.testing.worker import start_worker
from celery.signals import task_failure
from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.flow.dispatch import Lane
from shared.flow.outbox import stale_accounts
from shared.ledger.apply import PENDING_STATUSES
from shared.models import Account, AdjustmentRequest, LedgerEntry
from tests.factories import (
    Caller,
    Factory,
    assert_ledger_consistent,
    ledger_of,
    queue_requests,
)
from worker.app import DRAIN_TASK, TallyCelery

# The race: this many accounts with this many requests each, drained in chunks of 100.
RACE_ACCOUNTS = 10
RACE_REQUESTS_PER_ACCOUNT = 100


def _stale(sessions: sessionmaker[Session], delay: float) -> list[str]:
    with sessions() as session:
        return [a for accounts in stale_accounts(session, delay).values() for a in accounts]


def _pending(sessions: sessionmaker[Session], request_ids: list[int]) -> int:
    with sessions() as session:
        return (
            session.scalar(
                select(func.count()).where(
                    AdjustmentRequest.id.in_(request_ids),
                    AdjustmentRequest.status.in_(PENDING_STATUSES),
                )
            )
            or 0
        )


def _status(sessions: sessionmaker[Session], request_id: int) -> str:
    with sessions() as session:
        return session.get_one(AdjustmentRequest, request_id).status


def test_request_whose_message_was_removed_is_applied_after_the_relay_delay(
    celery_app: TallyCelery,
    relay_outbox: Task,
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
    redis: Redis,
) -> None:
    dispatcher = celery_app.dispatchers[Lane.INTERACTIVE]
    queue = celery_app.conf.task_default_queue
    user = factory.user()
    account_id, (request_id,) = queue_requests(sessions, moderator, user.id, [9])
    mark_key = dispatcher.dispatch_keys[0]
    # An idle system: no drain task queued or running.
    with celery_app.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)
    redis.delete(mark_key)

    # Published as the API does after the commit: one drain queued. The interactive lane
    # finds its accounts in the database, so the message is all there is to lose.
    assert dispatcher.notify([account_id]) == 1
    assert redis.exists(mark_key)
    assert redis.llen(queue) == 1
    message = json.loads(redis.lindex(queue, 0))  # type: ignore[arg-type]
    assert message["headers"]["task"] == DRAIN_TASK

    # Lost before any worker saw it. The mark stays, as it would: it says a task is on
    # its way, so no plain notify queues one.
    redis.delete(queue)
    assert redis.llen(queue) == 0
    assert dispatcher.notify([account_id]) == 0

    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        delay = celery_app.resources.settings.relay_delay
        assert account_id not in _stale(sessions, delay)  # younger than the delay: left alone
        time.sleep(delay + 0.1)
        assert _status(sessions, request_id) == "queued"  # nothing else would apply it
        assert account_id in _stale(sessions, delay)
        assert relay_outbox() >= 1

        deadline = time.monotonic() + 10
        while _status(sessions, request_id) != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _status(sessions, request_id) == "completed"
    with sessions() as session:
        assert_ledger_consistent(session, account_id)
        assert [e.request_id for e in ledger_of(session, user.id)] == [request_id]
    assert account_id not in _stale(sessions, delay)  # nothing left to relay


def test_relay_while_a_worker_applies_gives_one_entry(
    celery_app: TallyCelery,
    relay_outbox: Task,
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
) -> None:
    """The relay queues drains again and again while four worker threads drain."""
    users = [factory.user() for _ in range(RACE_ACCOUNTS)]
    ids_of: dict[int, list[int]] = {}
    accounts = []
    for user in users:
        account_id, ids_of[user.id] = queue_requests(
            sessions, moderator, user.id, [1] * RACE_REQUESTS_PER_ACCOUNT
        )
        accounts.append(account_id)
    ids = [request_id for user in users for request_id in ids_of[user.id]]
    time.sleep(celery_app.resources.settings.relay_delay + 0.1)  # every request is stale

    failures: list[BaseException] = []

    def on_failure(exception: BaseException, **_: object) -> None:
        failures.append(exception)

    task_failure.connect(on_failure, weak=False)
    try:
        with start_worker(
            celery_app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            shutdown_timeout=10,
        ):
            # The original drain, then the relay's copies, while the first ones work.
            celery_app.dispatchers[Lane.INTERACTIVE].notify(accounts)
            relays = 0
            deadline = time.monotonic() + 20
            while _pending(sessions, ids) and time.monotonic() < deadline:
                relays += relay_outbox() > 0
                time.sleep(0.005)
    finally:
        task_failure.disconnect(on_failure)

    assert failures == []
    assert relays >= 3  # the relay did race the drains
    with sessions() as session:
        twice = session.execute(
            select(LedgerEntry.request_id)
            .where(LedgerEntry.request_id.in_(ids))
            .group_by(LedgerEntry.request_id)
            .having(func.count() > 1)
        ).all()
        assert twice == []
        entries = dict(
            session.execute(
                select(LedgerEntry.request_id, LedgerEntry.id).where(
                    LedgerEntry.request_id.in_(ids)
                )
            ).all()
        )
        requests = session.execute(
            select(
                AdjustmentRequest.id, AdjustmentRequest.status, AdjustmentRequest.ledger_entry_id
            ).where(AdjustmentRequest.id.in_(ids))
        ).all()
        assert len(requests) == len(ids)
        assert {row.status for row in requests} == {"completed"}
        assert {row.id: row.ledger_entry_id for row in requests} == entries
        for user, account_id in zip(users, accounts, strict=True):
            assert_ledger_consistent(session, account_id)
            assert [e.request_id for e in ledger_of(session, user.id)] == ids_of[user.id]
            assert session.get_one(Account, account_id).balance == RACE_REQUESTS_PER_ACCOUNT
