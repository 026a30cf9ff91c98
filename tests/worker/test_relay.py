"""The outbox relay: a request whose Celery message is lost is still applied."""

from __future__ import annotations

import time

from celery import Task
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from shared.dispatch import Lane
from shared.models import AdjustmentRequest
from shared.outbox import stale_accounts
from tests.factories import Caller, Factory, assert_ledger_consistent, queue_requests
from worker.app import TallyCelery


def _stale(sessions: sessionmaker[Session], delay: float) -> list[str]:
    with sessions() as session:
        return [a for accounts in stale_accounts(session, delay).values() for a in accounts]


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
    worker: None,
) -> None:
    queue = celery_app.conf.task_default_queue
    user = factory.user()
    # Accept as the API does, publish, then lose the message before any worker sees it.
    with celery_app.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)
    account_id, (request_id,) = queue_requests(sessions, moderator, user.id, [9])
    redis.delete(queue)
    assert redis.llen(queue) == 0

    delay = celery_app.resources.settings.relay_delay
    assert account_id not in _stale(sessions, delay)  # younger than the delay: left alone
    time.sleep(delay + 0.1)
    assert account_id in _stale(sessions, delay)
    assert relay_outbox() >= 1

    deadline = time.monotonic() + 10
    while _status(sessions, request_id) != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _status(sessions, request_id) == "completed"
    with sessions() as session:
        assert_ledger_consistent(session, account_id)
    assert account_id not in _stale(sessions, delay)  # nothing left to relay


def test_relay_while_a_worker_applies_gives_one_entry(
    celery_app: TallyCelery,
    relay_outbox: Task,
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
    worker: None,
) -> None:
    user = factory.user()
    account_id, ids = queue_requests(sessions, moderator, user.id, [1] * 200)
    time.sleep(celery_app.resources.settings.relay_delay + 0.1)
    # The original task and the relay's copy race each other on the worker.
    celery_app.dispatchers[Lane.INTERACTIVE].notify([account_id])
    relay_outbox()
    celery_app.dispatchers[Lane.INTERACTIVE].notify([account_id], force=True)

    deadline = time.monotonic() + 15
    while _status(sessions, ids[-1]) != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
    with sessions() as session:
        assert_ledger_consistent(session, account_id)
        from tests.factories import ledger_of

        assert [e.request_id for e in ledger_of(session, user.id)] == ids
