"""Transient failures are retried with backoff; business rejections are final."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis.exceptions
from celery.contrib.testing.worker import start_worker
from celery.signals import task_failure, task_retry
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cli.embedded import free_port
from shared.flow.dispatch import Lane
from shared.flow.processing import note_error
from shared.ledger.apply import Applied
from shared.models import Account, AdjustmentRequest
from shared.platform.config import Settings
from shared.platform.keys import RedisKeys
from tests.factories import (
    Caller,
    Factory,
    apply_leftovers,
    assert_ledger_consistent,
    queue_requests,
)
from worker.app import TallyCelery, make_celery
from worker.tasks import _apply_apart


@pytest.fixture
def broken_celery(base_settings: Settings) -> Iterator[TallyCelery]:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/tally"
    # Its own queues and dispatch marks: a mark left behind must not hold up other tests.
    app = make_celery(
        base_settings.with_overrides({"database_url": dead, "queue_name": "tally-broken-db"})
    )
    app.loader.import_default_modules()
    # The deployment's id, as a process that read it before PostgreSQL went away has it.
    app.resources.__dict__["keys"] = RedisKeys("broken-db")
    yield app
    app.resources.close()


def test_database_down_is_retried_with_backoff_not_failed(broken_celery: TallyCelery) -> None:
    retries: list[str] = []
    failures: list[str] = []
    on_retry = lambda request, reason, **_: retries.append(repr(reason))  # noqa: E731
    on_failure = lambda exception, **_: failures.append(repr(exception))  # noqa: E731
    task_retry.connect(on_retry, weak=False)
    task_failure.connect(on_failure, weak=False)
    try:
        with start_worker(broken_celery, pool="solo", perform_ping_check=False):
            dispatcher = broken_celery.dispatchers[Lane.INTERACTIVE]
            dispatcher.notify(["01ARZ3NDEKTSV4RRFFQ69G5FAV"], force=True)
            deadline = time.monotonic() + 15
            while len(retries) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        task_retry.disconnect(on_retry)
        task_failure.disconnect(on_failure)
    assert len(retries) >= 2
    assert "OperationalError" in retries[0]
    assert failures == []


def test_insufficient_balance_is_a_final_rejection_with_a_code(
    apply_account: Callable[[str], int],
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
) -> None:
    user = factory.user()
    account_id, (first, overdraw, after) = queue_requests(sessions, moderator, user.id, [5, -6, -5])
    with sessions.begin() as session:
        session.execute(
            update(Account).where(Account.id == account_id).values(allow_negative=False)
        )

    apply_account(account_id)
    apply_account(account_id)  # a second run changes nothing: the rejection is final

    with sessions() as session:
        rows = {
            r.id: r
            for r in session.query(AdjustmentRequest).filter(
                AdjustmentRequest.account_id == account_id
            )
        }
        assert rows[first].status == "completed"
        assert rows[overdraw].status == "rejected"
        assert rows[overdraw].error_code == "insufficient_balance"
        assert rows[overdraw].ledger_entry_id is None
        assert rows[after].status == "completed"
        assert session.get_one(Account, account_id).balance == 0
        assert_ledger_consistent(session, account_id)


def test_a_transient_error_is_noted_on_free_rows_without_waiting_for_held_ones(
    factory: Factory, moderator: Caller, sessions: sessionmaker[Session]
) -> None:
    """The error path must not hang behind an applier that holds some of the rows (say,
    one whose Redis lock a failover lost): it notes the error on the rest and goes on."""
    account_id, (held, free) = queue_requests(sessions, moderator, factory.user().id, [1, 2])
    noted = threading.Thread(target=note_error, args=(sessions, [account_id], "ConnectionError()"))
    with sessions.begin() as applier:
        applier.execute(
            select(AdjustmentRequest.id).where(AdjustmentRequest.id == held).with_for_update()
        )
        noted.start()
        noted.join(timeout=10)
        assert not noted.is_alive(), "the error path waited for the applier's row lock"
    with sessions() as session:
        rows = {
            r.id: (r.attempts, r.last_error)
            for r in session.query(AdjustmentRequest).filter(
                AdjustmentRequest.account_id == account_id
            )
        }
    assert rows == {held: (0, None), free: (1, "ConnectionError()")}


def test_an_account_whose_requests_fail_for_good_is_parked_and_its_lane_goes_on(
    celery_app: TallyCelery,
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request no retry mends (a fault, not a rejection) must not stop the interactive
    lane, whose drain would otherwise find the same oldest account first every time."""
    apply_leftovers(celery_app)
    poison, (stuck,) = queue_requests(sessions, moderator, factory.user().id, [7])
    healthy = [queue_requests(sessions, moderator, factory.user().id, [1, 2]) for _ in range(3)]
    applied_ids = [request_id for _, ids in healthy for request_id in ids]
    apply = TallyCelery.apply

    def faulty(app: TallyCelery, account_ids: list[str]) -> Applied:
        if poison in account_ids:
            raise RuntimeError("a fault in this account's rows")
        return apply(app, account_ids)

    monkeypatch.setattr(TallyCelery, "apply", faulty)
    dispatcher = celery_app.dispatchers[Lane.INTERACTIVE]
    parked_before = _sample("tally_accounts_parked_total")
    failures: list[BaseException] = []

    def on_failure(exception: BaseException, **_: object) -> None:
        failures.append(exception)

    task_failure.connect(on_failure, weak=False)
    try:
        with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            dispatcher.notify([poison], force=True)
            deadline = time.monotonic() + 20
            while _statuses(sessions, applied_ids) != {"completed"}:
                assert time.monotonic() < deadline, _statuses(sessions, applied_ids)
                time.sleep(0.05)
            # Later requests are applied too while the account stays parked.
            later, (late,) = queue_requests(sessions, moderator, factory.user().id, [3])
            dispatcher.notify([later], force=True)
            while _statuses(sessions, [late]) != {"completed"}:
                assert time.monotonic() < deadline, _statuses(sessions, [late])
                time.sleep(0.05)
    finally:
        task_failure.disconnect(on_failure)

    assert failures == []  # no drain task failed: the fault stayed with its account
    assert poison in dispatcher._still_parked()
    assert _sample("tally_accounts_parked_total") == parked_before + 1
    with sessions() as session:
        row = session.get_one(AdjustmentRequest, stuck)
        assert (row.status, row.last_error) == (
            "queued",
            'RuntimeError("a fault in this account\'s rows")',
        )
    # Mended, it is applied at the next try.
    monkeypatch.setattr(TallyCelery, "apply", apply)
    apply_leftovers(celery_app)
    assert _statuses(sessions, [stuck]) == {"completed"}


def test_what_the_accounts_applied_one_by_one_committed_is_counted_before_a_retry(
    celery_app: TallyCelery,
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transient error on a later account of a chunk applied apart sends the task to its
    retry; the earlier accounts' outcomes are committed and must be counted all the same."""
    apply_leftovers(celery_app)
    first, _ = queue_requests(sessions, moderator, factory.user().id, [1, 2])
    second, _ = queue_requests(sessions, moderator, factory.user().id, [3])
    apply = TallyCelery.apply

    def flaky(app: TallyCelery, account_ids: list[str]) -> Applied:
        if second in account_ids:
            raise redis.exceptions.ConnectionError("Redis went away")
        return apply(app, account_ids)

    monkeypatch.setattr(TallyCelery, "apply", flaky)
    applied_before = _sample("tally_adjustments_applied_total")
    dispatcher = celery_app.dispatchers[Lane.INTERACTIVE]
    with pytest.raises(redis.exceptions.ConnectionError):
        _apply_apart(celery_app, dispatcher, [first, second])
    assert _sample("tally_adjustments_applied_total") == applied_before + 2
    monkeypatch.setattr(TallyCelery, "apply", apply)
    apply_leftovers(celery_app)


def _statuses(sessions: sessionmaker[Session], request_ids: list[int]) -> set[str]:
    with sessions() as session:
        return set(
            session.scalars(
                select(AdjustmentRequest.status).where(AdjustmentRequest.id.in_(request_ids))
            )
        )


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0
