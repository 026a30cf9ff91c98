"""Faults while adjustments flow: nothing accepted is lost, nothing is applied twice.

Each scenario first makes sure its fault hits work (a worker killed or paused inside
a chunk's transaction, Redis wiped while it holds undelivered work, PostgreSQL stopped
or crashed with requests pending, the API killed with requests in flight) and asserts
what the fault did; then tests/chaos/checks.py checks the ledger from its rows. Each
prints how many requests were accepted, what the clients saw, and how long recovery
took (fault over -> every accepted request final); run with -s to see it.

The points load (holds, expiring points, spends some refused) runs alongside: once
every lot and hold it made is due, beat's timers must have expired lots and timed out
holds, exactly once each, through the fault.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.models import AdjustmentRequest
from tests.chaos.checks import Run
from tests.chaos.conftest import LOCK_TTL_SECONDS, Rig
from tests.chaos.faults import (
    AIM_LIMIT,
    freeze_inside_a_chunk,
    pending_requests,
    process_group,
    signal_all,
)
from tests.chaos.scenario import run_scenario
from tests.stack import kill_group, wait_until_up

pytestmark = pytest.mark.chaos

DOWN_SECONDS = 3.0

# What the faults look at.


def _worker_metric(rig: Rig, name: str) -> float:
    """A counter summed over every running worker's /metrics (all its labels)."""
    total = 0.0
    for worker, url in rig.stack.worker_metrics.items():
        if worker not in rig.stack.processes:
            continue
        page = requests.get(url, timeout=5).text
        for family in text_string_to_metric_families(page):
            total += sum(s.value for s in family.samples if s.name == name)
    return total


# The scenarios.


def test_worker_killed_mid_chunk(rig: Rig) -> None:
    def kill_a_worker_mid_chunk(evidence: dict[str, Any]) -> None:
        freeze_inside_a_chunk(rig, "worker1", evidence)
        kill_group(rig.stack, "worker1")
        time.sleep(DOWN_SECONDS)
        rig.stack.start_worker("worker1")

    run, _ = run_scenario(rig, kill_a_worker_mid_chunk, clients_see_it=False)
    # It held a chunk's row locks, in a transaction the kill cut short; work was waiting.
    assert run.evidence["frozen_in_transaction"] >= 1
    assert run.evidence["pending"] > 0


def _redis_work(rig: Rig, queue: str) -> int:
    """What Redis holds for the workers: pending accounts, queued and unacked messages."""
    client = rig.redis_client()
    try:
        held = sum(client.scard(key) for key in client.scan_iter("tally:pending:*"))
        held += sum(client.llen(q) for q in (queue, f"{queue}.bulk", f"{queue}.relay"))
        return held + client.hlen("unacked")
    finally:
        client.close()


def test_redis_restarted_empty(rig: Rig) -> None:
    """Redis is wiped while it holds work; a request accepted meanwhile for an account
    nobody else touches is announced to no worker, and is applied all the same: found in
    PostgreSQL by the interactive lane's next drain (shared.flow.dispatch,
    ScanningDispatcher) or by the outbox relay, whichever comes first."""

    def wipe_redis(evidence: dict[str, Any]) -> None:
        deadline = time.monotonic() + AIM_LIMIT
        relayed = _worker_metric(rig, "tally_relay_accounts_total")
        queue = rig.stack.env["TALLY_QUEUE_NAME"]
        while True:
            pending, held = pending_requests(rig), _redis_work(rig, queue)
            if pending and held:
                break
            assert time.monotonic() < deadline, "Redis never held work to lose"
            time.sleep(0.02)
        rig.redis.kill()
        evidence.update(fault_at=time.monotonic(), pending=pending, redis_held=held)
        evidence["relayed_before"] = relayed
        # Accepted while Redis is down: the API cannot hand it to anyone.
        key = "chaos-probe-quiet"
        response = requests.post(
            f"{rig.stack.base_url}/api/v2/score/",
            json={"user_id": rig.quiet_user_id, "score": 7, "comment": key},
            headers={
                "Authorization": f"Bearer {rig.caller.token}",
                "Idempotency-Key": key,
                "Prefer": "respond-async",
            },
            timeout=15,
        )
        assert response.status_code == 202, response.text
        evidence["probes"] = {key: int(response.headers["Location"].rsplit("/", 1)[1])}
        time.sleep(max(0.0, evidence["fault_at"] + DOWN_SECONDS - time.monotonic()))
        rig.redis.start()

    # The workers' Celery consumers take a few seconds to reconnect: load on for longer,
    # so that the points load is rejected some spends after the fault too.
    run, _ = run_scenario(rig, wipe_redis, clients_see_it=False, after=4.0)
    assert run.evidence["pending"] > 0 and run.evidence["redis_held"] > 0
    relayed = _worker_metric(rig, "tally_relay_accounts_total") - run.evidence["relayed_before"]
    with rig.sessions() as session:
        probe = session.get_one(AdjustmentRequest, run.probes["chaos-probe-quiet"])
        assert probe.status == "completed"
    print(f"  relay: {relayed:.0f} accounts handed over again after the wipe (the drain's")
    print("  scan of PostgreSQL finds the rest)")


def _stop_postgres(rig: Rig, stop: Callable[[], None], evidence: dict[str, Any]) -> None:
    deadline = time.monotonic() + AIM_LIMIT
    while not (pending := pending_requests(rig)):
        assert time.monotonic() < deadline, "nothing was ever pending"
        time.sleep(0.02)
    evidence["retries_before"] = _worker_metric(rig, "tally_task_retries_total")
    evidence.update(fault_at=time.monotonic(), pending=pending)
    stop()
    time.sleep(DOWN_SECONDS)  # the API answers 503 with Retry-After meanwhile
    rig.postgres.start()


def _assert_postgres_outage_seen(rig: Rig, run: Run) -> None:
    """Work was pending when it went; clients were answered 503 (or cut off) meanwhile;
    the workers' tasks failed on it and were retried."""
    assert run.evidence["pending"] > 0
    seen = [t for t in run.load.troubles if t.at >= run.fault_started]
    assert any(t.kind == "503" for t in seen), run.load.troubles
    retries = _worker_metric(rig, "tally_task_retries_total") - run.evidence["retries_before"]
    assert retries > 0, "no worker task met the outage"
    print(f"  {len(seen)} 503s and broken connections, {retries:.0f} task retries")


def test_postgres_restarted(rig: Rig) -> None:
    def restart_postgres(evidence: dict[str, Any]) -> None:
        _stop_postgres(rig, rig.postgres.stop, evidence)

    run, _ = run_scenario(rig, restart_postgres, clients_see_it=True)
    _assert_postgres_outage_seen(rig, run)


def test_postgres_crashed(rig: Rig) -> None:
    """An immediate shutdown: no checkpoint, every connection dropped at once; the
    restart recovers from the WAL and everything answered as accepted is there."""

    def crash_postgres(evidence: dict[str, Any]) -> None:
        _stop_postgres(rig, rig.postgres.crash, evidence)

    run, _ = run_scenario(rig, crash_postgres, clients_see_it=True)
    _assert_postgres_outage_seen(rig, run)


def test_api_and_beat_killed(rig: Rig) -> None:
    """kill -9 the API (every process of it) and beat mid-load; start them again. The
    clients retry with their keys: requests recorded by a try whose answer was lost are
    replayed, not recorded twice; beat's timers go on.

    The workers are paused for a moment first, so that the requests in flight when the
    API dies are recorded and waiting for their 201: the kill surely loses answers."""

    def kill_api_and_beat(evidence: dict[str, Any]) -> None:
        workers = [pid for name in ("worker1", "worker2") for pid in process_group(rig, name)]
        signal_all(workers, signal.SIGSTOP)
        try:
            time.sleep(0.3)
            evidence["waiting"] = pending_requests(rig)
            evidence["api_processes"] = len(process_group(rig, "api"))
            evidence["fault_at"] = time.monotonic()
            kill_group(rig.stack, "api")
            kill_group(rig.stack, "beat")
        finally:
            signal_all(workers, signal.SIGCONT)
        time.sleep(1.5)
        rig.stack.start_beat()
        rig.stack.start_api()
        wait_until_up(rig.stack)

    run, _ = run_scenario(rig, kill_api_and_beat, clients_see_it=True)
    assert run.evidence["waiting"] > 0
    errors = run.load.transport_errors()
    # Requests were cut off mid-way, and some tries found nobody listening.
    assert errors["connection_cut"] > 0, errors
    assert errors["connection_refused"] > 0, errors
    # Some were recorded before the kill: their retry was answered as a replay.
    assert run.load.replayed_after_trouble, "no answer lost with the API was replayed"


def test_lock_expires_while_its_holder_is_paused(rig: Rig) -> None:
    """SIGSTOP a worker inside a chunk, past its Redis locks' TTL: the locks expire while
    it sleeps (another worker may take them; the row locks keep it waiting), and once
    resumed the worker notices it had lost them."""

    def pause_a_worker(evidence: dict[str, Any]) -> None:
        pids = freeze_inside_a_chunk(rig, "worker1", evidence)
        client = rig.redis_client()
        try:
            first = _locks(client)
            time.sleep(0.3)
            # Held across the pause by one token: the paused worker's (a running one
            # holds a lock for milliseconds).
            held = {key: token for key, token in _locks(client).items() if first.get(key) == token}
            evidence["locks_held"] = len(held)
            deadline = time.monotonic() + LOCK_TTL_SECONDS + 2
            while any(_locks(client).get(key) == token for key, token in held.items()):
                assert time.monotonic() < deadline, "the paused worker's locks never expired"
                time.sleep(0.05)
            evidence["expired_after"] = round(time.monotonic() - evidence["fault_at"], 2)
            time.sleep(0.5)  # others may take the accounts now, and wait on the row locks
        finally:
            client.close()
            signal_all(pids, signal.SIGCONT)

    run, _ = run_scenario(rig, pause_a_worker, clients_see_it=False)
    assert run.evidence["frozen_in_transaction"] >= 1
    assert run.evidence["locks_held"] >= 1
    log = (rig.stack.log_dir / "worker1.log").read_text(errors="replace")
    assert "account locks expired before release" in log


def _locks(client: Any) -> dict[bytes, bytes]:
    keys = list(client.scan_iter("tally:*:lock:account:*"))
    values = client.mget(keys) if keys else []
    return {key: value for key, value in zip(keys, values, strict=True) if value is not None}
