"""Celery tasks: apply an account's pending requests; relay stale outbox rows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import redis.exceptions
import sqlalchemy.exc
from celery import Task, shared_task
from celery.signals import worker_process_init

from shared.db import transaction
from shared.ledger import Outcome
from shared.metrics import (
    ADJUSTMENTS_APPLIED,
    ADJUSTMENTS_REJECTED,
    APPLY_LATENCY,
    TASK_RETRIES,
)
from shared.models import AdjustmentStatus
from shared.outbox import stale_accounts
from shared.processing import AccountBusy, drain_accounts, note_transient_error
from worker.app import (
    ACCOUNTS_PER_TASK,
    APPLY_ACCOUNT_TASK,
    APPLY_ACCOUNTS_TASK,
    RELAY_OUTBOX_TASK,
    TallyCelery,
)

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    AccountBusy,
)


def _app(task: Task) -> TallyCelery:
    app = task.app
    assert isinstance(app, TallyCelery)
    return app


class ApplyTask(Task):
    def on_retry(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        TASK_RETRIES.labels(type(exc).__name__).inc()
        if isinstance(exc, AccountBusy):
            return
        account_ids = args[0] if isinstance(args[0], list) else [args[0]]
        try:
            note_transient_error(_app(self).resources.sessions, account_ids, repr(exc))
        except TRANSIENT_ERRORS:
            log.warning("could not record a transient error for %d accounts", len(account_ids))


RETRYING = {
    "base": ApplyTask,
    "bind": True,
    "acks_late": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": None,
}


def _apply(task: Task, account_ids: list[str], again: Callable[[], None]) -> int:
    resources = _app(task).resources
    settings = resources.settings
    applied = drain_accounts(
        account_ids,
        redis=resources.redis,
        sessions=resources.sessions,
        lock_ttl=settings.lock_ttl,
        lock_wait=settings.lock_wait,
        chunk=settings.apply_chunk,
    )
    record_outcomes(applied.outcomes)
    if applied.more:
        # Let the next chunk be a task of its own, so that a stopping worker stops soon.
        again()
    return len(applied.outcomes)


@shared_task(name=APPLY_ACCOUNT_TASK, **RETRYING)
def apply_account(self: Task, account_id: str) -> int:
    """Apply the pending requests of one account; safe to run any number of times."""
    return _apply(self, [account_id], lambda: self.app.send_task(APPLY_ACCOUNT_TASK, [account_id]))


@shared_task(name=APPLY_ACCOUNTS_TASK, **RETRYING)
def apply_accounts(self: Task, account_ids: list[str]) -> int:
    """Apply the pending requests of many accounts (a batch's) in one transaction."""
    return _apply(self, account_ids, lambda: self.app.send_task(APPLY_ACCOUNTS_TASK, [account_ids]))


def record_outcomes(outcomes: list[Outcome]) -> None:
    """Metrics, and one log line per applied chunk naming every adjustment in it."""
    if not outcomes:
        return
    now = datetime.now(UTC)
    applied = [o for o in outcomes if o.status == AdjustmentStatus.COMPLETED]
    rejected = [o for o in outcomes if o.status == AdjustmentStatus.REJECTED]
    ADJUSTMENTS_APPLIED.inc(len(applied))
    for outcome in applied:
        APPLY_LATENCY.observe((now - outcome.accepted_at).total_seconds())
    for outcome in rejected:
        ADJUSTMENTS_REJECTED.labels(outcome.error_code).inc()
    log.info(
        "adjustments applied",
        extra={
            "adjustment_ids": [o.request_id for o in applied],
            "rejected": {o.request_id: o.error_code for o in rejected},
            "batch_ids": sorted({o.batch_id for o in outcomes if o.batch_id}),
            "account_ids": sorted({o.account_id for o in outcomes}),
        },
    )


@shared_task(name=RELAY_OUTBOX_TASK, bind=True, acks_late=True)
def relay_outbox(self: Task) -> int:
    """Re-publish accounts whose requests are still pending after the relay delay."""
    resources = _app(self).resources
    with transaction(resources.sessions) as session:
        accounts = stale_accounts(session, resources.settings.relay_delay)
    for start in range(0, len(accounts), ACCOUNTS_PER_TASK):
        self.app.send_task(APPLY_ACCOUNTS_TASK, [accounts[start : start + ACCOUNTS_PER_TASK]])
    if accounts:
        log.info("relayed %d accounts with stale requests", len(accounts))
    return len(accounts)


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A forked child must not reuse the parent's sockets.
    from celery import current_app

    app = current_app._get_current_object()
    if isinstance(app, TallyCelery):
        app.resources.after_fork()
