"""The apply task: exactly one ledger entry per request, whatever the delivery."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy.exc
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.flow.dispatch import Lane
from shared.ledger.apply import apply_pending
from shared.models import Account, AdjustmentRequest, LedgerEntry
from shared.platform.db import make_session_factory, transaction
from tests.conftest import Services
from tests.factories import (
    Caller,
    Factory,
    apply_leftovers,
    apply_now,
    assert_ledger_consistent,
    queue_requests,
)
from worker.app import TallyCelery


def _entries_per_request(session: Session, request_ids: list[int]) -> dict[int, int]:
    counts = {request_id: 0 for request_id in request_ids}
    for entry in session.scalars(
        select(LedgerEntry).where(LedgerEntry.request_id.in_(request_ids))
    ):
        counts[entry.request_id] += 1
    return counts


def test_applies_pending_requests_in_acceptance_order(
    apply_account: Callable[[str], int],
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
) -> None:
    user = factory.user()
    account_id, ids = queue_requests(sessions, moderator, user.id, [5, -2, 10, -20])

    assert apply_account(account_id) == 4

    with sessions() as session:
        entries = list(
            session.scalars(
                select(LedgerEntry)
                .where(LedgerEntry.account_id == account_id)
                .order_by(LedgerEntry.id)
            )
        )
        assert [e.request_id for e in entries] == ids
        assert [(e.balance_before, e.balance_after) for e in entries] == [
            (0, 5),
            (5, 3),
            (3, 13),
            (13, -7),
        ]
        assert_ledger_consistent(session, account_id)
        statuses = session.scalars(
            select(AdjustmentRequest.status).where(AdjustmentRequest.id.in_(ids))
        ).all()
        assert set(statuses) == {"completed"}


def test_a_task_delivered_twice_at_once_applies_each_request_once(
    apply_account: Callable[[str], int],
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
) -> None:
    user = factory.user()
    account_id, ids = queue_requests(sessions, moderator, user.id, list(range(1, 41)))
    barrier = threading.Barrier(4)

    def deliver() -> None:
        barrier.wait()
        apply_account(account_id)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    apply_account(account_id)  # and once more, late

    with sessions() as session:
        assert set(_entries_per_request(session, ids).values()) == {1}
        assert_ledger_consistent(session, account_id)


def test_a_completed_request_is_not_applied_again(
    apply_account: Callable[[str], int],
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
) -> None:
    user = factory.user()
    account_id, ids = queue_requests(sessions, moderator, user.id, [7])
    assert apply_account(account_id) == 1
    assert apply_account(account_id) == 0
    with sessions() as session:
        assert _entries_per_request(session, ids) == {ids[0]: 1}


def _completed(sessions: sessionmaker[Session], request_ids: list[int]) -> list[int]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AdjustmentRequest.id)
                .where(
                    AdjustmentRequest.id.in_(request_ids),
                    AdjustmentRequest.status == "completed",
                )
                .order_by(AdjustmentRequest.id)
            )
        )


def test_one_chunk_per_task_and_the_rest_follows(
    celery_app: TallyCelery,
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
    worker: None,
) -> None:
    """One apply (one transaction) takes at most `apply_chunk` requests; the drain goes on."""
    chunk = celery_app.resources.settings.apply_chunk
    apply_leftovers(celery_app)  # the drain's chunks are this test's requests alone
    user = factory.user()
    account_id, ids = queue_requests(sessions, moderator, user.id, [1] * (3 * chunk + 50))

    # One apply call: exactly the first chunk, in order, and word that more are pending.
    applied = celery_app.apply([account_id])
    assert [o.request_id for o in applied.outcomes] == ids[:chunk]
    assert applied.more
    assert _completed(sessions, ids) == ids[:chunk]

    # The worker's drain applies the rest, chunk by chunk.
    celery_app.dispatchers[Lane.INTERACTIVE].notify([account_id])
    deadline = time.monotonic() + 30
    while len(_completed(sessions, ids)) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _completed(sessions, ids) == ids

    with sessions() as session:
        assert_ledger_consistent(session, account_id)
        assert set(_entries_per_request(session, ids).values()) == {1}
        # An entry's created_at is its transaction's start: one group per transaction.
        per_transaction = session.execute(
            select(LedgerEntry.created_at, func.count())
            .where(LedgerEntry.request_id.in_(ids))
            .group_by(LedgerEntry.created_at)
            .order_by(LedgerEntry.created_at)
        ).all()
    assert [count for _, count in per_transaction] == [chunk, chunk, chunk, 50]


def test_a_chunk_cut_short_leaves_nothing_and_is_applied_whole_later(
    celery_app: TallyCelery,
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy import text

    import shared.ledger.apply

    users = [factory.user() for _ in range(3)]
    accounts, ids = [], []
    for user in users:
        account_id, request_ids = queue_requests(sessions, moderator, user.id, [3, -1, 4])
        accounts.append(account_id)
        ids += request_ids

    # The worker dies after writing the chunk's ledger rows, before the commit.
    crash = text("SELECT pg_terminate_backend(pg_backend_pid())")
    monkeypatch.setattr(shared.ledger.apply, "UPDATE_ACCOUNTS", crash)
    with pytest.raises(sqlalchemy.exc.DBAPIError):
        apply_now(celery_app, accounts)
    with sessions() as session:
        assert session.scalar(select(func.count()).where(LedgerEntry.request_id.in_(ids))) == 0
        statuses = set(
            session.scalars(select(AdjustmentRequest.status).where(AdjustmentRequest.id.in_(ids)))
        )
        assert statuses == {"queued"}

    monkeypatch.undo()
    assert apply_now(celery_app, accounts) == len(ids)
    with sessions() as session:
        for account_id in accounts:
            assert_ledger_consistent(session, account_id)
            assert session.get_one(Account, account_id).balance == 6


def test_the_pending_requests_are_read_unprepared_and_planned_with_their_values(
    services: Services, factory: Factory, moderator: Caller, sessions: sessionmaker[Session]
) -> None:
    """psycopg prepares a statement on its fifth run on a connection, and PostgreSQL may
    then keep one generic plan for it: the applier's read of the pending requests must
    not be one of them (a plan made while the table was nearly empty kept scanning it
    whole once a bulk batch had filled it). The chunk's own write is prepared."""
    if not services.prepared_statements:
        pytest.fail("run without PgBouncer: this test is about prepared statements")
    engine = services.engine(pool_size=1)  # one connection: the one psycopg prepares on
    one_connection = make_session_factory(engine)
    user = factory.user()
    try:
        for amount in range(1, 9):
            account_id, _ = queue_requests(sessions, moderator, user.id, [amount])
            with transaction(one_connection) as session:
                assert len(apply_pending(session, [account_id], 10).outcomes) == 1
        with one_connection() as session:
            prepared = session.scalars(text("SELECT statement FROM pg_prepared_statements")).all()
    finally:
        engine.dispose()
    assert any("INSERT INTO ledger_entries" in statement for statement in prepared)
    assert not [s for s in prepared if "FROM adjustment_requests" in s and "ORDER BY id" in s]
