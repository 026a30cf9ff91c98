"""Faults while adjustments flow: nothing accepted is lost, nothing is applied twice.

Each scenario prints how many requests were accepted during the fault and how long
recovery took (fault over -> every accepted request final); run with -s to see it.

The points load (holds, expiring points) runs alongside: once every lot and hold it
made is due, beat's timers must have expired lots and timed out holds, exactly once
each, through the fault.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import func, select, text

from shared.models import Account, AdjustmentRequest, LedgerEntry
from shared.reconcile import reconcile
from tests.chaos.conftest import LOCK_TTL_SECONDS, Rig
from tests.chaos.load import POINTS_TIMER_MAX, Load
from tests.factories import assert_ledger_consistent
from tests.stack import kill_group, signal_process

pytestmark = pytest.mark.chaos

RECOVERY_LIMIT = 60.0
# After the load stops, its last lots and holds are due within POINTS_TIMER_MAX; beat
# asks every half second, and a fault may have left work to the relay.
TIMERS_LIMIT = 30.0


def _wait_all_final(rig: Rig, load: Load) -> float:
    """Seconds until every accepted request (single or in a batch) is completed or rejected."""
    started = time.monotonic()
    ids = [a.request_id for a in load.accepted] + [p.request_id for p in load.points]
    batch_ids = [b.batch_id for b in load.batches]
    while True:
        with rig.sessions() as session:
            pending = session.scalar(
                select(func.count()).where(
                    AdjustmentRequest.id.in_(ids) | AdjustmentRequest.batch_id.in_(batch_ids),
                    AdjustmentRequest.status.in_(("queued", "processing")),
                )
            )
        if pending == 0:
            return time.monotonic() - started
        assert time.monotonic() - started < RECOVERY_LIMIT, (
            f"{pending} accepted requests still pending\n{rig.stack.logs()}"
        )
        time.sleep(0.2)


def _verify(rig: Rig, load: Load) -> None:
    assert load.statuses[500] == 0, load.statuses
    assert load.missing_retry_after == 0
    assert load.replays_mismatched == 0
    expected: dict[int, int] = {}
    for accepted in load.accepted:
        expected[accepted.user_id] = expected.get(accepted.user_id, 0) + accepted.amount
    for batch in load.batches:
        for user_id, amount in batch.items:
            expected[user_id] = expected.get(user_id, 0) + amount
    ids = [a.request_id for a in load.accepted]
    assert len(set(ids)) == len(ids), "two keys named one request"
    with rig.sessions() as session:
        entries = dict(
            session.execute(
                select(LedgerEntry.request_id, LedgerEntry.id).where(
                    LedgerEntry.request_id.in_(ids)
                )
            ).all()
        )
        assert len(entries) == len(ids), "an accepted request has no ledger entry"
        batch_ids = [b.batch_id for b in load.batches]
        batch_requests = session.scalar(
            select(func.count()).where(AdjustmentRequest.batch_id.in_(batch_ids))
        )
        batch_entries = session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .join(AdjustmentRequest, AdjustmentRequest.id == LedgerEntry.request_id)
            .where(AdjustmentRequest.batch_id.in_(batch_ids))
        )
        assert batch_requests == batch_entries == 200 * len(load.batches)
        for user_id, total in expected.items():
            account = session.scalars(
                select(Account).where(
                    Account.user_id == user_id, Account.points_type == "reputation"
                )
            ).one()
            assert account.balance == total, f"user {user_id}"
            assert_ledger_consistent(session, account.id)
        for request_ids in load.sent_by_thread.values():
            ledger_ids = [entries[r] for r in request_ids]
            assert ledger_ids == sorted(ledger_ids), "acceptance order broken"
        _verify_points(session, rig, load)
        assert reconcile(session).violations == []
    result = subprocess.run(
        [sys.executable, "-m", "cli", "reconcile"],
        env=os.environ | {"TALLY_DATABASE_URL": rig.postgres.url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


POINTS_STATE = text("""
    SELECT
        (SELECT COUNT(*) FROM adjustment_requests
         WHERE tenant_id = :tenant AND status IN ('queued', 'processing')) AS pending,
        (SELECT COUNT(*) FROM lots WHERE tenant_id = :tenant AND remaining > 0) AS live_lots,
        (SELECT COUNT(*) FROM holds WHERE tenant_id = :tenant AND status = 'open') AS open_holds
""")


def _wait_timers(rig: Rig, stopped: float) -> float:
    """Seconds until the points load's lots and holds are all due and dealt with: no lot
    has points left, no hold is open, no request (the timers' own included) is pending."""
    started = time.monotonic()
    time.sleep(max(0.0, stopped + POINTS_TIMER_MAX - started))
    while True:
        with rig.sessions() as session:
            state = session.execute(POINTS_STATE, {"tenant": rig.caller.tenant_id}).one()
        if state.pending == state.live_lots == state.open_holds == 0:
            return time.monotonic() - started
        assert time.monotonic() - started < TIMERS_LIMIT, f"{state}\n{rig.stack.logs()}"
        time.sleep(0.2)


def _verify_points(session, rig: Rig, load: Load) -> None:  # type: ignore[no-untyped-def]
    """Every accepted points operation is final, as answered; the timers ran, once each."""
    assert load.points_statuses[500] == 0, load.points_statuses
    assert load.points_problems == []
    assert load.points, "the points load made no request"
    ids = [p.request_id for p in load.points]
    assert len(set(ids)) == len(ids), "two keys named one request"
    final = dict(
        session.execute(
            select(AdjustmentRequest.id, AdjustmentRequest.status).where(
                AdjustmentRequest.id.in_(ids)
            )
        ).all()
    )
    answered = {201: {"completed"}, 202: {"completed", "rejected"}, 409: {"rejected"}}
    for operation in load.points:
        assert final[operation.request_id] in answered[operation.status], operation
    # A hold whose retry was refused past its timeout may still have been recorded.
    refused = session.scalars(
        select(AdjustmentRequest.status).where(
            AdjustmentRequest.tenant_id == rig.caller.tenant_id,
            AdjustmentRequest.idempotency_key.in_(load.holds_refused_on_retry),
        )
    ).all()
    assert set(refused) <= {"completed", "rejected"}
    rejected = Counter(
        session.scalars(
            select(AdjustmentRequest.error_code).where(
                AdjustmentRequest.id.in_(ids), AdjustmentRequest.status == "rejected"
            )
        )
    )
    assert rejected["insufficient_balance"] > 0, rejected
    accounts = session.execute(
        select(Account.id, Account.frozen_balance, Account.expired_points).where(
            Account.user_id.in_(rig.points_user_ids), Account.points_type == "points"
        )
    ).all()
    assert accounts
    # Every hold is closed: nothing is frozen any more.
    assert [a for a in accounts if a.frozen_balance != 0] == []
    assert sum(a.expired_points for a in accounts) > 0, "no lot expired"
    holds = Counter(
        session.scalars(
            text("SELECT status FROM holds WHERE tenant_id = :tenant"),
            {"tenant": rig.caller.tenant_id},
        )
    )
    assert holds["timed_out"] > 0, holds
    # Each lot expired at most once and never more than it had; each subject asked once.
    lots_over = session.execute(
        text("""
            SELECT l.entry_ulid, l.amount, COUNT(x.id), -SUM(x.amount)
            FROM lots l JOIN ledger_entries x ON x.type = 'expire' AND x.related_id = l.entry_ulid
            WHERE l.tenant_id = :tenant
            GROUP BY l.entry_ulid, l.amount
            HAVING COUNT(x.id) > 1 OR -SUM(x.amount) > l.amount
        """),
        {"tenant": rig.caller.tenant_id},
    ).all()
    assert lots_over == []
    asked_twice = session.execute(
        text("""
            SELECT entry_type, related_id FROM adjustment_requests
            WHERE tenant_id = :tenant AND entry_type IN ('expire', 'timeout')
              AND status <> 'rejected'
            GROUP BY entry_type, related_id HAVING COUNT(*) > 1
        """),
        {"tenant": rig.caller.tenant_id},
    ).all()
    assert asked_twice == []
    expired = session.scalar(
        text("SELECT COUNT(*) FROM ledger_entries WHERE tenant_id = :tenant AND type = 'expire'"),
        {"tenant": rig.caller.tenant_id},
    )
    print(
        f"points: {len(load.points)} operations accepted, answers {dict(load.points_statuses)},"
        f" rejected {dict(rejected)}, {expired} lots expired, holds {dict(holds)},"
        f" {len(load.holds_refused_on_retry)} hold retries refused past their timeout"
    )


def _run(rig: Rig, fault, before: float = 2.0, after: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    load = Load(
        rig.stack.base_url, rig.caller.token, rig.user_ids, points_user_ids=rig.points_user_ids
    )
    load.start()
    time.sleep(before)
    fault_started = time.monotonic()
    fault()
    fault_ended = time.monotonic()
    time.sleep(after)
    load.stop()
    stopped = time.monotonic()
    _wait_all_final(rig, load)
    recovery = time.monotonic() - fault_ended  # fault over -> every accepted request final
    timers = _wait_timers(rig, stopped)
    in_flight = load.accepted_between(fault_started, fault_ended + after)
    print(
        f"\n{fault.__name__}: {len(load.accepted)} single and {len(load.batches)} batches "
        f"of 200 accepted, {in_flight} single during/after the fault, "
        f"answers {dict(load.statuses)}, recovered in {recovery:.1f} s, "
        f"timers done {timers:.1f} s later"
    )
    _verify(rig, load)


def test_worker_killed_mid_chunk(rig: Rig) -> None:
    def kill_a_worker() -> None:
        kill_group(rig.stack, "worker1")
        time.sleep(3)
        rig.stack.start_worker("worker1")

    _run(rig, kill_a_worker)


def test_redis_restarted_empty(rig: Rig) -> None:
    def wipe_redis() -> None:
        rig.redis.kill()
        time.sleep(3)  # the API keeps accepting meanwhile
        rig.redis.start()

    _run(rig, wipe_redis)


def test_postgres_restarted(rig: Rig) -> None:
    def restart_postgres() -> None:
        rig.postgres.stop()
        time.sleep(3)  # the API answers 503 with Retry-After meanwhile
        rig.postgres.start()

    _run(rig, restart_postgres)


def test_lock_expires_while_its_holder_is_paused(rig: Rig) -> None:
    def pause_a_worker() -> None:
        for child in _children(rig.stack.processes["worker1"].pid):
            os.kill(child, signal.SIGSTOP)
        time.sleep(LOCK_TTL_SECONDS + 2)
        for child in _children(rig.stack.processes["worker1"].pid):
            os.kill(child, signal.SIGCONT)

    _run(rig, pause_a_worker)
    signal_process  # noqa: B018  (kept for scenarios that signal the main process)


def _children(pid: int) -> list[int]:
    """The worker's main process and its pool processes."""
    import psutil

    parent = psutil.Process(pid)
    return [pid, *(child.pid for child in parent.children(recursive=True))]
