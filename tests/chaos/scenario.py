"""One chaos scenario: load, a fault, more load, then every accepted request final and
the whole ledger checked (tests/chaos/checks.py). The HA suite runs its faults the same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, text

from shared.models import AdjustmentRequest
from tests.chaos.checks import Findings, Run, verify
from tests.chaos.conftest import Rig
from tests.chaos.load import POINTS_TIMER_MAX, Load

RECOVERY_LIMIT = 60.0
# After the load stops, its last lots and holds are due within POINTS_TIMER_MAX; beat
# asks every half second, and a fault may have left work to the relay.
TIMERS_LIMIT = 30.0

Fault = Callable[[dict[str, Any]], None]


def wait_all_final(rig: Rig, load: Load) -> float:
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


POINTS_STATE = text("""
    SELECT
        (SELECT COUNT(*) FROM adjustment_requests
         WHERE tenant_id = :tenant AND status IN ('queued', 'processing')) AS pending,
        (SELECT COUNT(*) FROM lots WHERE tenant_id = :tenant AND remaining > 0) AS live_lots,
        (SELECT COUNT(*) FROM holds WHERE tenant_id = :tenant AND status = 'open') AS open_holds
""")


def wait_timers(rig: Rig, stopped: float) -> float:
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


def run_scenario(
    rig: Rig, fault: Fault, clients_see_it: bool, before: float = 2.0, after: float = 2.0
) -> tuple[Run, Findings]:
    """Load, fault, load, then wait for everything to be final and check it all.

    The fault fills in its evidence; `evidence["fault_at"]`, if it sets it, is when it
    struck (after aiming), else the fault window starts when `fault` is called.
    """
    load = Load(
        rig.stack.base_url, rig.caller.token, rig.user_ids, points_user_ids=rig.points_user_ids
    )
    evidence: dict[str, Any] = {}
    load.start()
    time.sleep(before)
    called = time.monotonic()
    fault(evidence)
    fault_ended = time.monotonic()
    time.sleep(after)
    load.stop()
    stopped = time.monotonic()
    wait_all_final(rig, load)
    recovery = time.monotonic() - fault_ended  # fault over -> every accepted request final
    timers = wait_timers(rig, stopped)
    fault_started = evidence.pop("fault_at", called)
    run = Run(load, fault_started, fault_ended, clients_see_it, evidence)
    run.probes = evidence.pop("probes", {})
    findings = verify(rig, run)
    in_flight = load.accepted_between(fault_started, fault_ended + after)
    print(
        f"\n{fault.__name__}: {len(load.accepted)} single and {len(load.batches)} batches "
        f"of 200 accepted, {in_flight} single during/after the fault, "
        f"answers {dict(load.statuses)}, transport errors {dict(load.transport_errors())},"
        f" {len(load.retried_keys)} keys retried ({len(load.replayed_after_trouble)} ended"
        f" in a replay), fault {fault_ended - fault_started:.1f} s, recovered in"
        f" {recovery:.1f} s, timers done {timers:.1f} s later\n"
        f"  hit: {evidence}\n"
        f"  last trouble {findings.last_trouble_after_fault} s after the fault ended\n"
        f"  ledger: {findings.entries} entries of {findings.requests} requests, each counted;"
        f" entries after a higher request id (accepted concurrently):"
        f" {dict(findings.out_of_id_order)}; {findings.rejected_since_fault} unaffordable"
        f" spends rejected since the fault began"
    )
    return run, findings
