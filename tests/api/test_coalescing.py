"""A busy system coalesces: many adjustments over many accounts, applied by very few tasks."""

from __future__ import annotations

import time

from celery.contrib.testing.worker import start_worker
from celery.signals import task_prerun
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.flow.dispatch import Lane, queue_of
from shared.flow.outbox import pending_single_accounts
from shared.models import AdjustmentRequest
from tests.factories import Caller, Factory, apply_leftovers, assert_ledger_consistent
from worker.app import DRAIN_TASK, TallyCelery

ACCOUNTS = 50
ADJUSTMENTS = 300


def test_many_adjustments_over_many_accounts_are_applied_by_one_task(
    flask_app: Flask,
    celery_app: TallyCelery,
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
) -> None:
    queue = celery_app.conf.task_default_queue
    redis = celery_app.resources.redis
    # Every lane's queue: a task another test left (a batch's drain) would run here too.
    with celery_app.connection_for_write() as connection:
        for lane in Lane:
            connection.default_channel.queue_purge(queue_of(queue, lane))
    for lane_dispatcher in celery_app.dispatchers.values():
        redis.delete(*lane_dispatcher.pending_keys, *lane_dispatcher.dispatch_keys)
    apply_leftovers(celery_app)
    users = [factory.user() for _ in range(ACCOUNTS)]
    client = flask_app.test_client()
    ids = []
    for n in range(ADJUSTMENTS):
        answer = client.post(
            "/api/v2/score/",
            json={"user_id": users[n % ACCOUNTS].id, "score": 1, "comment": f"c{n}"},
            headers=moderator.headers | {"Prefer": "respond-async"},
        )
        assert answer.status_code == 202
        ids.append(answer.json["id"])
    # While no worker runs, 300 accepted requests put one task on the queue, which will
    # find every account in the database.
    assert redis.llen(queue) == 1
    accounts = pending_single_accounts(celery_app.resources.engine, ADJUSTMENTS)
    assert len(accounts) == ACCOUNTS

    runs: list[str] = []

    def count(sender: object = None, **_: object) -> None:
        runs.append(getattr(sender, "name", ""))

    task_prerun.connect(count, weak=False)
    try:
        with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with sessions() as session:
                    pending = session.scalar(
                        select(func.count()).where(
                            AdjustmentRequest.id.in_(ids), AdjustmentRequest.status == "queued"
                        )
                    )
                if pending == 0:
                    break
                time.sleep(0.05)
    finally:
        task_prerun.disconnect(count)
    assert pending == 0
    assert runs == [DRAIN_TASK]
    with sessions() as session:
        for user in users:
            account_id = session.scalar(
                select(AdjustmentRequest.account_id).where(AdjustmentRequest.user_id == user.id)
            )
            assert_ledger_consistent(session, account_id)
