"""Celery tasks: drain the accounts the dispatcher holds; relay stale outbox rows; ask for
the expiry of due lots and the release of timed-out holds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis.exceptions
import sqlalchemy.exc
from celery import Task, shared_task
from celery.signals import worker_process_init
from sqlalchemy.orm import Session

from shared.events.log import prune_events
from shared.events.notices import warn_expiring_lots
from shared.events.webhooks import delivery_finished, prune_deliveries, requeue_delivery
from shared.flow.dispatch import (
    ACCOUNTS_PER_TASK,
    DRAIN_SECONDS,
    GATHER_SECONDS,
    PARK_SECONDS,
    Dispatcher,
    Lane,
)
from shared.flow.outbox import stale_accounts
from shared.flow.processing import AccountBusy, note_error
from shared.intake.idempotency import forget_requests
from shared.ledger.apply import Applied, Outcome
from shared.ledger.partitions import make_partitions_ahead
from shared.ledger.timers import request_expiries, request_hold_timeouts
from shared.models import AdjustmentStatus
from shared.platform import logs
from shared.platform.db import autocommit, transaction
from shared.platform.metrics import (
    ACCOUNTS_PARKED,
    ADJUSTMENTS_APPLIED,
    ADJUSTMENTS_REJECTED,
    APPLY_LATENCY,
    RELAY_ACCOUNTS,
    RELAY_RUNS,
    TASK_RETRIES,
)
from shared.platform.statistics import maintain
from shared.platform.tracing import new_trace
from worker.app import (
    DELIVER_WEBHOOKS_TASK,
    DRAIN_TASK,
    EXPIRE_LOTS_TASK,
    FORGET_REQUESTS_TASK,
    MAINTAIN_TASK,
    PARTITION_LEDGER_TASK,
    PRUNE_EVENTS_TASK,
    RELAY_OUTBOX_TASK,
    TIME_OUT_HOLDS_TASK,
    WARN_EXPIRING_TASK,
    TallyCelery,
)
from worker.pump import deliver_later

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


class DrainTask(Task):
    def on_retry(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        TASK_RETRIES.labels(type(exc).__name__).inc()


@shared_task(
    name=DRAIN_TASK,
    base=DrainTask,
    bind=True,
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def drain(self: Task, lane: str = Lane.INTERACTIVE, partition: int = 0) -> int:
    """Apply the pending requests of the accounts a lane's partition holds, many at a time.

    Works until the set is empty or DRAIN_SECONDS pass (then it queues its successor,
    so that a stopping worker stops soon). A transient failure puts the accounts back
    and retries the task after a backoff, the dispatch mark still taken; if Redis is
    gone too, the outbox relay finds them again.
    """
    app = _app(self)
    dispatcher = app.dispatchers[Lane(lane)]
    deadline = time.monotonic() + DRAIN_SECONDS
    applied_count = 0
    while True:
        # A moment for more requests to gather: fewer, larger transactions (a third of the
        # workers' and PostgreSQL's CPU per adjustment), for 4 ms more until the 201.
        time.sleep(GATHER_SECONDS)
        account_ids = dispatcher.take(partition, ACCOUNTS_PER_TASK)
        if not account_ids:
            if dispatcher.release(partition):
                return applied_count
            continue
        try:
            applied = app.apply(account_ids)
        except TRANSIENT_ERRORS as error:
            _put_back(app, dispatcher, account_ids, error)
            raise
        except Exception:
            applied = _apply_apart(app, dispatcher, account_ids)
        record_outcomes(applied.outcomes)
        applied_count += len(applied.outcomes)
        if applied.more:
            dispatcher.return_accounts(account_ids)
        if time.monotonic() > deadline:
            # Its successor starts a trace of its own: under a steady load drain tasks
            # follow one another for hours, and one trace would hold them all.
            with new_trace():
                dispatcher.requeue(partition)
            return applied_count


def _apply_apart(app: TallyCelery, dispatcher: Dispatcher, account_ids: list[str]) -> Applied:
    """Apply the accounts one by one after their chunk failed for good, parking each that
    fails alone: a request that cannot be applied (a fault, not a business rule: those
    are rejections) must not hold up the others of its lane."""
    outcomes: list[Outcome] = []
    more = False
    for account_id in account_ids:
        try:
            applied = app.apply([account_id])
        except TRANSIENT_ERRORS as error:
            # What the accounts before it applied is committed: counted before the retry.
            record_outcomes(outcomes)
            _put_back(app, dispatcher, account_ids, error)
            raise
        except Exception as error:
            log.exception(
                "account parked for %.0f s: its pending requests failed to apply",
                PARK_SECONDS,
                extra={"account_id": account_id},
            )
            ACCOUNTS_PARKED.inc()
            dispatcher.park(account_id)
            try:
                note_error(app.resources.sessions, [account_id], repr(error))
            except TRANSIENT_ERRORS:
                log.warning("could not record the error of account %s", account_id)
            continue
        outcomes += applied.outcomes
        more = more or applied.more
    return Applied(outcomes, more)


def _put_back(
    app: TallyCelery, dispatcher: Dispatcher, account_ids: list[str], error: Exception
) -> None:
    """Best effort: note the error on the requests and return the accounts to the set."""
    if not isinstance(error, AccountBusy):
        try:
            note_error(app.resources.sessions, account_ids, repr(error))
        except TRANSIENT_ERRORS:
            log.warning("could not record a transient error for %d accounts", len(account_ids))
    try:
        dispatcher.return_accounts(account_ids)
    except redis.exceptions.RedisError:
        log.warning("could not put back %d accounts; the relay will find them", len(account_ids))


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
        extra=logs.some_ids("adjustment_ids", [o.request_id for o in applied])
        | logs.some_ids("rejected_ids", [f"{o.request_id}:{o.error_code}" for o in rejected])
        | logs.some_ids("batch_ids", sorted({o.batch_id for o in outcomes if o.batch_id}))
        | logs.some_ids("account_ids", sorted({o.account_id for o in outcomes})),
    )


@shared_task(name=RELAY_OUTBOX_TASK, bind=True, acks_late=True)
def relay_outbox(self: Task) -> int:
    """Hand the workers again the accounts whose requests are pending past the relay delay."""
    app = _app(self)
    with transaction(app.resources.sessions) as session:
        stale = stale_accounts(session, app.resources.settings.relay_delay)
    RELAY_RUNS.inc()
    for lane, accounts in stale.items():
        RELAY_ACCOUNTS.labels(lane.value).inc(len(accounts))
        # Something was lost on the way (a message, a popped account): queue a drain anyway.
        app.dispatchers[lane].notify(accounts, force=True)
        log.info("relayed %d accounts with stale requests", len(accounts), extra={"lane": lane})
    return sum(len(accounts) for accounts in stale.values())


# Lots or holds asked for per run; more wait for the next run.
DUE_PER_RUN = 10_000


@shared_task(name=EXPIRE_LOTS_TASK, bind=True, acks_late=True)
def expire_lots(self: Task) -> int:
    """Record an expiry request for each lot past its expiry; hand their accounts over."""
    return _ask_workers(self, request_expiries, "lot expiries")


@shared_task(name=TIME_OUT_HOLDS_TASK, bind=True, acks_late=True)
def time_out_holds(self: Task) -> int:
    """Record a timeout request for each open hold past its timeout; hand their accounts over."""
    return _ask_workers(self, request_hold_timeouts, "hold timeouts")


def _ask_workers(task: Task, ask: Callable[[Session, int], list[str]], what: str) -> int:
    """Record the due requests (committed), then dispatch their accounts like an accept.

    If the dispatch fails, the relay finds the requests; a task run twice asks nothing twice.
    """
    app = _app(task)
    with transaction(app.resources.sessions) as session:
        accounts = ask(session, DUE_PER_RUN)
    if accounts:
        app.dispatchers[Lane.INTERACTIVE].notify(accounts)
        log.info("requested %s", what, extra=logs.some_ids("account_ids", accounts))
    return len(accounts)


# How long one delivery task works before it hands over to its successor.
DELIVER_SECONDS = 1.0


@shared_task(name=DELIVER_WEBHOOKS_TASK, bind=True, acks_late=True)
def deliver_webhooks(self: Task, endpoint_id: str) -> int:
    """Send an endpoint's due deliveries for about DELIVER_SECONDS (shared.events.
    webhook_sender); queue a successor if more are due. How many were sent."""
    app = _app(self)
    run = app.webhooks.run(endpoint_id, DELIVER_SECONDS)
    redis, keys = app.resources.redis, app.resources.keys
    if run.more:
        requeue_delivery(redis, keys, endpoint_id, deliver_later(app))
    elif not run.busy:
        delivery_finished(redis, keys, endpoint_id)
    return run.sent


@shared_task(name=WARN_EXPIRING_TASK, bind=True, acks_late=True)
def warn_expiring(self: Task) -> int:
    """Write `lot.expiring` for each lot within its points type's warning days of expiry."""
    app = _app(self)
    with transaction(app.resources.sessions) as session:
        return warn_expiring_lots(session, app.resources.settings.points_types, DUE_PER_RUN)


@shared_task(name=PRUNE_EVENTS_TASK, bind=True, acks_late=True)
def prune_old_events(self: Task) -> int:
    """The event log's retention: delete events older than TALLY_EVENTS_RETENTION_DAYS, and
    the finished webhook deliveries of events gone."""
    app = _app(self)
    with transaction(app.resources.sessions) as session:
        pruned = prune_events(session, app.resources.settings.events_retention_days)
        prune_deliveries(session)
        return pruned


@shared_task(name=PARTITION_LEDGER_TASK, bind=True, acks_late=True)
def partition_ledger(self: Task) -> list[str]:
    """Make the ledger's partitions for this month and the next three where missing."""
    with transaction(_app(self).resources.sessions) as session:
        return make_partitions_ahead(session, datetime.now(UTC))


# The idempotency window's retention: request rows deleted per transaction, and how
# long one run may go on (it shares the relay lane with the outbox relay; beat runs it
# every five minutes, and the next run goes on where this one stopped).
FORGET_PER_TRANSACTION = 5_000
FORGET_SECONDS = 30.0


@shared_task(name=FORGET_REQUESTS_TASK, bind=True, acks_late=True)
def forget_old_requests(self: Task) -> int:
    """Delete the request rows of adjustments accepted before the idempotency window
    (TALLY_IDEMPOTENCY_WINDOW_DAYS; 0 keeps them), a few thousand per transaction, for
    at most FORGET_SECONDS."""
    resources = _app(self).resources
    window = resources.settings.idempotency_window_days
    forgotten, more = 0, window > 0
    deadline = time.monotonic() + FORGET_SECONDS
    while more and time.monotonic() < deadline:
        with transaction(resources.sessions) as session:
            deleted, more = forget_requests(
                session, window, datetime.now(UTC), FORGET_PER_TRANSACTION
            )
        forgotten += deleted
    if forgotten:
        log.info("forgot %d request rows past the idempotency window", forgotten)
    return forgotten


@shared_task(name=MAINTAIN_TASK, bind=True, acks_late=True)
def maintain_tables(self: Task) -> list[str]:
    """ANALYZE the tables whose statistics the writes made stale, VACUUM the period totals
    once many of their rows are dead (shared.platform.statistics)."""
    engine = _app(self).resources.engine
    with autocommit(engine) as connection:
        done = maintain(connection)
    if done:
        log.info("table maintenance: %s", ", ".join(done))
    return done


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A forked child must not reuse the parent's sockets.
    from celery import current_app

    app = current_app._get_current_object()
    if isinstance(app, TallyCelery):
        app.resources.after_fork()
