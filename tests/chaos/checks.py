"""What must hold after every fault, checked from the rows themselves.

- every answer was one a careful client can act on (no 500; 503 with Retry-After);
  each 503, timeout and broken connection happened while the fault was on, and each
  retried key ended with exactly one request row, the one its answer named;
- exactly once, counted here: the ledger entries of the tenant are counted per
  request id (a Counter over the rows, so a duplicate cannot hide in a dict): each
  completed request has one, a rejected or pending one none, and the requests are
  exactly those the clients were answered for (their keys), the items of the batches
  they were answered for, and the expiries and timeouts beat asked for;
- per account, the ledger follows the order the server accepted the requests in,
  across every client thread, batch and single: a request answered before another was
  first sent has a lower id and an earlier entry; and each batch's items apply in item
  order. Entries out of request-id order are counted: they may only be requests
  accepted concurrently (one commits first although it took the higher id);
- the points load's spends that the account cannot afford were rejected during or
  after the fault too (and have no entry);
- balances add up, `tally reconcile` is clean, beat's timers ran once each;
- the event log went through the fault with the ledger (docs/events.md): once beat's
  pump has numbered everything, each request a client made has exactly one
  `request.accepted` (batch items: their batch's `batch.accepted`) and one outcome
  event naming its status, each ledger row exactly one `entry.created`, and every
  account's `account_seq` runs 1, 2, 3... without a gap or a repeat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.ledger.reconcile import reconcile
from shared.models import Account, AdjustmentRequest, LedgerEntry
from tests.chaos.conftest import Rig
from tests.chaos.load import Load
from tests.factories import assert_ledger_consistent

# A 503 or a broken connection may come back this long after the fault is over: the
# first statement on each pooled connection of each API process after a PostgreSQL
# restart, a try sent just before the fault ended.
TROUBLE_GRACE = 2.0
SYSTEM_OPERATIONS = ("expire", "timeout")


@dataclass
class Run:
    """One scenario's load, when its fault was on, and what the fault found to hit."""

    load: Load
    fault_started: float
    fault_ended: float
    # Whether clients may see the fault (503s, broken connections): the API or a server
    # it needs was down.
    clients_see_it: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    # Requests the scenario itself sent (by key), apart from the load's.
    probes: dict[str, int] = field(default_factory=dict)


@dataclass
class Findings:
    """What the checks counted, for the scenario's summary line."""

    entries: int = 0
    requests: int = 0
    # Entries applied after an entry of a higher request id, by what the late one was:
    # "batch item", "single" (the other clients' requests) or "beat" (expiry, timeout).
    out_of_id_order: Counter[str] = field(default_factory=Counter)
    # The last 503 or broken connection, seconds after the fault ended.
    last_trouble_after_fault: float | None = None
    rejected_since_fault: int = 0


def verify(rig: Rig, run: Run) -> Findings:
    load = run.load
    findings = Findings()
    check_answers(load)
    check_troubles(run)
    if load.troubles:
        findings.last_trouble_after_fault = max(t.at for t in load.troubles) - run.fault_ended
    with rig.sessions() as session:
        rows = requests_of(session, rig.caller.tenant_id)
        entries = entries_of(session, rig.caller.tenant_id)
        findings.requests, findings.entries = len(rows), len(entries)
        check_exactly_once(rows, entries)
        check_requests_are_the_answered_ones(rows, load, run.probes)
        check_retried_keys(rows, load)
        findings.out_of_id_order = check_order(rows, entries, load)
        findings.rejected_since_fault = check_rejections(rows, load, run.fault_started)
        check_balances(session, load)
        check_points(session, rig, load)
        check_events(session, rig.caller.tenant_id, rows, entries)
        assert reconcile(session).violations == []
    result = subprocess.run(
        [sys.executable, "-m", "cli", "reconcile"],
        env=os.environ | {"TALLY_DATABASE_URL": rig.postgres.url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return findings


def check_answers(load: Load) -> None:
    assert load.statuses[500] == 0, load.statuses
    assert load.points_statuses[500] == 0, load.points_statuses
    assert load.missing_retry_after == 0
    assert load.replays_mismatched == 0
    assert load.abandoned == [], "keys never accepted within the retry deadline"
    assert load.points_problems == []
    assert load.accepted and load.batches and load.points, "a client made no request"


def check_troubles(run: Run) -> None:
    """Every 503 and every try without an answer came while the fault was on."""
    troubles = run.load.troubles
    if not run.clients_see_it:
        assert troubles == [], f"clients saw a fault that should not reach them: {troubles[:5]}"
        return
    outside = [
        t for t in troubles if not run.fault_started <= t.at <= run.fault_ended + TROUBLE_GRACE
    ]
    assert outside == [], (
        f"{len(outside)} troubles outside the fault window, first {outside[:5]}"
        f" (fault {run.fault_started:.2f}..{run.fault_ended:.2f})"
    )


@dataclass(frozen=True, slots=True)
class Row:
    """A request row, narrowed to what the checks read."""

    id: int
    key: str | None
    status: str
    operation: str
    batch_id: str | None
    user_id: int
    amount: int
    error: str | None


def requests_of(session: Session, tenant_id: str) -> dict[int, Row]:
    found = session.execute(
        select(
            AdjustmentRequest.id,
            AdjustmentRequest.idempotency_key,
            AdjustmentRequest.status,
            AdjustmentRequest.entry_type,
            AdjustmentRequest.batch_id,
            AdjustmentRequest.user_id,
            AdjustmentRequest.amount,
            AdjustmentRequest.error_code,
        ).where(AdjustmentRequest.tenant_id == tenant_id)
    )
    return {row.id: Row(*row) for row in found}


def entries_of(session: Session, tenant_id: str) -> list[tuple[int, int, str]]:
    """(entry id, request id, account id) of every ledger row of the tenant, as stored."""
    found = session.execute(
        select(LedgerEntry.id, LedgerEntry.request_id, LedgerEntry.account_id)
        .where(LedgerEntry.tenant_id == tenant_id)
        .order_by(LedgerEntry.id)
    )
    return [(entry_id, request_id, account_id) for entry_id, request_id, account_id in found]


def count_entries(entries: Iterable[tuple[int, int, str]]) -> Counter[int]:
    """Ledger rows per request id; two rows of one request count 2."""
    return Counter(request_id for _, request_id, _ in entries)


def check_exactly_once(rows: dict[int, Row], entries: list[tuple[int, int, str]]) -> None:
    per_request = count_entries(entries)
    strangers = set(per_request) - set(rows)
    assert not strangers, f"entries of requests that are not the tenant's: {sorted(strangers)[:10]}"
    twice = {r: n for r, n in per_request.items() if n > 1}
    assert not twice, f"requests with more than one ledger entry: {dict(list(twice.items())[:10])}"
    wrong = [
        (row.id, row.status, per_request[row.id])
        for row in rows.values()
        if per_request[row.id] != (1 if row.status == "completed" else 0)
    ]
    assert not wrong, f"(request, status, entries) that do not match: {wrong[:10]}"
    pending = [row.id for row in rows.values() if row.status in ("queued", "processing")]
    assert not pending, f"requests still pending: {pending[:10]}"


def check_requests_are_the_answered_ones(
    rows: dict[int, Row], load: Load, probes: dict[str, int]
) -> None:
    """One row per key; each answered key's row is the request its answer named; no
    request that no client was answered for, but the items of answered batches and the
    expiries and timeouts beat asked for."""
    keys = Counter(row.key for row in rows.values() if row.key is not None)
    assert [k for k, n in keys.items() if n > 1] == []
    by_key = {row.key: row for row in rows.values() if row.key is not None}
    named = (
        {a.key: a.request_id for a in load.accepted}
        | {p.key: p.request_id for p in load.points}
        | probes
    )
    wrong = [
        (key, request_id)
        for key, request_id in named.items()
        if key not in by_key or by_key[key].id != request_id
    ]
    assert wrong == [], f"answers that named another request than the key's: {wrong[:5]}"
    batch_keys = {b.batch_id: b.key for b in load.batches}
    explained = set(named) | set(load.refused_past_expiry) | set(probes)
    unexplained = [
        row.id
        for row in rows.values()
        if row.key not in explained
        and row.batch_id not in batch_keys
        and row.operation not in SYSTEM_OPERATIONS
    ]
    assert unexplained == [], f"requests no client was answered for: {unexplained[:10]}"
    items = Counter(row.batch_id for row in rows.values() if row.batch_id is not None)
    assert set(items) == set(batch_keys), "a batch was recorded that no client was answered for"
    assert all(items[b.batch_id] == len(b.items) for b in load.batches), items
    for row in rows.values():
        if row.batch_id is not None:
            assert row.key is not None and row.key.startswith(batch_keys[row.batch_id] + ":")
        if row.operation in SYSTEM_OPERATIONS:
            assert row.key is None, row.key


def check_retried_keys(rows: dict[int, Row], load: Load) -> None:
    """A key retried after a 503, a timeout or a broken connection: one request, or
    one batch with its items, whatever the tries that came before."""
    by_key = Counter(row.key for row in rows.values())
    batch_items = {b.key: len(b.items) for b in load.batches}
    per_batch_key = Counter(
        row.key.rsplit(":", 1)[0]
        for row in rows.values()
        if row.batch_id is not None and row.key is not None
    )
    for key in load.retried_keys:
        if key in batch_items:
            assert per_batch_key[key] == batch_items[key], key
        elif key in load.refused_past_expiry:
            assert by_key[key] <= 1, key
        else:
            assert by_key[key] == 1, f"retried key {key}: {by_key[key]} request rows"


def client_times(rows: dict[int, Row], load: Load) -> dict[int, tuple[float, float]]:
    """(first sent, answered) of each request a client sent, batch items by their batch."""
    times = {a.request_id: (a.sent_at, a.answered_at) for a in load.accepted}
    times |= {p.request_id: (p.sent_at, p.answered_at) for p in load.points}
    batches = {b.batch_id: (b.sent_at, b.answered_at) for b in load.batches}
    for row in rows.values():
        if row.batch_id is not None:
            times[row.id] = batches[row.batch_id]
    return times


def check_order(
    rows: dict[int, Row], entries: list[tuple[int, int, str]], load: Load
) -> Counter[str]:
    """The ledger of each account follows acceptance order; return how many entries came
    after an entry of a higher request id (requests accepted concurrently: the late one
    took its id first and committed last), by kind."""
    times = client_times(rows, load)
    # The ids: a request answered before another was first sent took a lower id.
    later_answered = float("inf")
    for request_id in sorted(times, reverse=True):
        sent, answered = times[request_id]
        assert later_answered >= sent, (
            f"request {request_id} was sent after a request with a higher id was answered"
        )
        later_answered = min(later_answered, answered)
    # The ledger: per account, in entry order, no request applied after one that was
    # first sent only once it had been answered.
    by_account: dict[str, list[int]] = defaultdict(list)
    for _, request_id, account_id in entries:  # in entry id order
        by_account[account_id].append(request_id)
    violations: list[str] = []
    out_of_id_order: Counter[str] = Counter()
    for account_id, request_ids in by_account.items():
        latest: tuple[float, int] | None = None  # (first sent, request) among earlier entries
        highest = 0
        for request_id in request_ids:
            if request_id < highest:
                row = rows[request_id]
                late = "beat" if row.operation in SYSTEM_OPERATIONS else "single"
                out_of_id_order["batch item" if row.batch_id else late] += 1
            highest = max(highest, request_id)
            if request_id not in times:
                continue  # beat's expiries and timeouts: no client saw them accepted
            sent, answered = times[request_id]
            if latest is not None and latest[0] > answered:
                violations.append(
                    f"account {account_id}: request {request_id} applied after request"
                    f" {latest[1]}, first sent {latest[0] - answered:.3f} s after it was answered"
                )
            if latest is None or sent > latest[0]:
                latest = (sent, request_id)
    assert violations == [], f"{len(violations)} out of acceptance order: {violations[:5]}"
    check_batch_order(rows, entries, load)
    return out_of_id_order


def check_batch_order(
    rows: dict[int, Row], entries: list[tuple[int, int, str]], load: Load
) -> None:
    """Each batch's items are its requests in item order, and each account's items
    are applied in item order."""
    entry_of = {request_id: entry_id for entry_id, request_id, _ in entries}
    items: dict[str, list[tuple[int, Row]]] = defaultdict(list)
    for row in rows.values():
        if row.batch_id is not None and row.key is not None:
            items[row.batch_id].append((int(row.key.rsplit(":", 1)[1]), row))
    for batch in load.batches:
        in_item_order = [row for _, row in sorted(items[batch.batch_id], key=lambda p: p[0])]
        assert [(r.user_id, r.amount) for r in in_item_order] == batch.items, batch.key
        ids = [r.id for r in in_item_order]
        assert ids == sorted(ids), f"{batch.key}: request ids not in item order"
        # Accounts are applied apart (bulk partitions in parallel); each in item order.
        applied: dict[int, list[int]] = defaultdict(list)
        for row in in_item_order:
            applied[row.user_id].append(entry_of[row.id])
        wrong = [user for user, ids in applied.items() if ids != sorted(ids)]
        assert wrong == [], f"{batch.key}: items of users {wrong} not applied in item order"


def check_rejections(rows: dict[int, Row], load: Load, fault_started: float) -> int:
    """Spends the account could not afford, sent once the fault had begun, were rejected."""
    since = [
        p
        for p in load.points
        if p.sent_at >= fault_started
        and p.kind == "adjust"
        and rows[p.request_id].error == "insufficient_balance"
    ]
    assert since, "no spend was rejected for want of balance during or after the fault"
    assert all(rows[p.request_id].status == "rejected" for p in since)
    return len(since)


def check_balances(session: Session, load: Load) -> None:
    expected: Counter[int] = Counter()
    for accepted in load.accepted:
        expected[accepted.user_id] += accepted.amount
    for batch in load.batches:
        for user_id, amount in batch.items:
            expected[user_id] += amount
    for user_id, total in expected.items():
        account = session.scalars(
            select(Account).where(Account.user_id == user_id, Account.points_type == "reputation")
        ).one()
        assert account.balance == total, f"user {user_id}"
        assert_ledger_consistent(session, account.id)


EVENTS_LIMIT = 30.0


def check_events(
    session: Session, tenant_id: str, rows: dict[int, Row], entries: list[tuple[int, int, str]]
) -> None:
    """The tenant's events match its requests and entries one for one (see the top)."""
    deadline = time.monotonic() + EVENTS_LIMIT
    while session.scalar(
        text("SELECT count(*) FROM events WHERE tenant_id = :t AND id IS NULL"), {"t": tenant_id}
    ):
        assert time.monotonic() < deadline, "beat's pump left events unnumbered"
        time.sleep(0.2)
        session.rollback()  # a fresh snapshot
    events = session.execute(
        text("SELECT account_id, account_seq, type, payload FROM events"
             " WHERE tenant_id = :t ORDER BY id"), {"t": tenant_id},
    ).all()  # fmt: skip
    by_type: dict[str, Counter[object]] = defaultdict(Counter)
    sequences: dict[str, list[int]] = defaultdict(list)
    for event in events:
        key = event.payload.get("request_id", event.payload.get("batch_id"))
        by_type[event.type][key] += 1
        if event.account_id is not None:
            sequences[event.account_id].append(event.account_seq)
    made = {i: r for i, r in rows.items() if r.operation not in SYSTEM_OPERATIONS}
    singles = {i for i, r in made.items() if r.batch_id is None}
    assert by_type["request.accepted"] == Counter(singles)
    batches = {r.batch_id for r in made.values()} - {None}
    assert by_type["batch.accepted"] == by_type["batch.completed"] == Counter(batches)
    for status, kind in (("completed", "request.applied"), ("rejected", "request.rejected")):
        assert by_type[kind] == Counter(i for i, r in made.items() if r.status == status), kind
    assert by_type["entry.created"] == count_entries(entries)
    for account_id, numbers in sequences.items():
        assert numbers == list(range(1, len(numbers) + 1)), account_id


def check_points(session: Session, rig: Rig, load: Load) -> None:
    """Every accepted points operation is final, as answered; the timers ran, once each."""
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
    # A hold or an earn whose retry was refused past its expiry may still have been recorded.
    refused = session.scalars(
        select(AdjustmentRequest.status).where(
            AdjustmentRequest.tenant_id == rig.caller.tenant_id,
            AdjustmentRequest.idempotency_key.in_(load.refused_past_expiry),
        )
    ).all()
    assert set(refused) <= {"completed", "rejected"}
    accounts = session.execute(
        select(Account.id, Account.frozen_balance, Account.expired_points).where(
            Account.user_id.in_(rig.points_user_ids), Account.points_type == "points"
        )
    ).all()
    assert accounts
    for account in accounts:
        assert_ledger_consistent(session, account.id)
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
    rejected = Counter(
        session.scalars(
            select(AdjustmentRequest.error_code).where(
                AdjustmentRequest.id.in_(ids), AdjustmentRequest.status == "rejected"
            )
        )
    )
    expired = session.scalar(
        text("SELECT COUNT(*) FROM ledger_entries WHERE tenant_id = :tenant AND type = 'expire'"),
        {"tenant": rig.caller.tenant_id},
    )
    print(
        f"points: {len(load.points)} operations accepted, answers {dict(load.points_statuses)},"
        f" rejected {dict(rejected)}, {expired} lots expired, holds {dict(holds)},"
        f" {len(load.refused_past_expiry)} retries refused past their expiry"
    )
