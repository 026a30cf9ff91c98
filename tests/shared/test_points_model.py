"""The real applier against the reference model of docs/points.md (tests/shared/points_model.py).

A Hypothesis state machine accepts random requests on one account (earns with and
without an expiry, spends, forced spends, holds with and without a timeout, captures
of all or part, releases, reversals of earns, spends and captures, freezing), lets time
pass (the real expiry and timeout timers ask for what is due), and applies what is
pending through the worker's own function (shared.flow.processing.drain_accounts) in chunks
of several requests. After every apply each request's outcome, the account's balance,
frozen balance, totals and expired points, and every lot are compared with the model's;
after every example the whole ledger is reconciled.

The event log is checked against the same model: after every apply and every freeze the
account's new events are numbered and read back, and must be exactly the events the
model's outcomes call for (each request's acceptance and outcome, each entry, each hold
opened and closed, each lot expired, each status change), with `account_seq` without a
gap and the entries' balances chained in event order up to the account's balance. A
reversal refused at acceptance rolls back and must leave no event.

Time is the model's clock in hours; every deadline stored in PostgreSQL is that far from
the real clock, and letting time pass moves the stored deadlines (of lots, holds and
queued requests) back by as much. Examples: TALLY_MODEL_EXAMPLES (120 here; `make soak`
runs many more).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis import Redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared.events.log import number_events
from shared.flow.processing import drain_accounts
from shared.intake.adjustments import Adjustment, SubjectTaken, reversal_of, submit
from shared.intake.auth import Principal
from shared.intake.validation import UserRef
from shared.ledger.reconcile import reconcile
from shared.ledger.timers import request_expiries, request_hold_timeouts
from shared.models import LedgerEntry, Operation, Role
from shared.platform.config import DEFAULT_POINTS_TYPES
from shared.platform.db import make_engine, make_session_factory, transaction
from shared.platform.keys import RedisKeys
from tests.conftest import Services
from tests.factories import Factory
from tests.shared.points_model import COMPLETED, PointsModel, Request

KEYS = RedisKeys("model")
EXAMPLES = int(os.environ.get("TALLY_MODEL_EXAMPLES", "120"))
# Shrinking a failure to its shortest form can take minutes: `make soak` does it.
SHRINK = os.environ.get("TALLY_MODEL_SHRINK", "") == "1"
HOUR = timedelta(hours=1)


@dataclass
class Env:
    sessions: sessionmaker[Session]
    redis: Redis


@pytest.fixture
def env(own_database: str, services: Services) -> Iterator[Env]:
    engine = make_engine(own_database, pool_size=2)
    redis = Redis.from_url(services.redis_url)
    yield Env(make_session_factory(engine), redis)
    redis.close()
    engine.dispose()


class PointsMachine(RuleBasedStateMachine):
    env: Env

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.order = 0
        self.pending: list[Request] = []
        self.holds: list[int] = []
        self.reversible: list[int] = []  # completed earns, spends and captures
        self.live_reversals: dict[int, int] = {}  # reversed request -> its reversal
        self.entries: dict[int, str] = {}  # completed request -> its entry's ULID
        self.lots: dict[str, int] = {}  # lot ULID -> its earn's request id
        self.seen = 0  # the newest request of the account
        # The account's events the model calls for, and what was read of them so far.
        self.expected_events: Counter[tuple[str, object]] = Counter()
        self.read_events: Counter[tuple[str, object]] = Counter()
        self.event_cursor = 0
        self.account_seq = 0
        self.entry_balance = 0

    @initialize(points_type=st.sampled_from(["points", "reputation"]))
    def open_account(self, points_type: str) -> None:
        factory = Factory(self.env.sessions)
        caller = factory.caller(Role.MODERATOR)
        self.principal = Principal(caller.user_id, caller.tenant_id, caller.username, "",
                                   Role.MODERATOR)  # fmt: skip
        self.user = factory.user().id
        self.points_type = DEFAULT_POINTS_TYPES[points_type]
        self.model = PointsModel(self.points_type.allow_negative)
        self.account_id = ""

    # Requests

    def _deadline(self, hours: int | None) -> tuple[tuple[int, int] | None, datetime | None]:
        """A deadline `hours` from now, on the model's clock and on the database's. Among
        deadlines of the same hour the first made comes first: the database's now() grows."""
        if hours is None:
            return None, None
        self.order += 1
        with self.env.sessions() as session:
            now = session.scalar(text("SELECT now()"))
        return (self.now + hours, self.order), now + hours * HOUR

    def _accept(self, request: Request, adjustment: Adjustment, apply_now: bool = False) -> None:
        """Record the request; apply it (with whatever is pending) at once, or leave it
        pending so that several requests share one chunk."""
        with transaction(self.env.sessions) as session:
            recorded = submit(
                session.connection(), self.principal, UserRef("user_id", user_id=self.user),
                adjustment, self.points_type, None,
            )  # fmt: skip
        self.account_id = recorded.account_id
        self.seen = request.id = recorded.request_id
        self.expected_events["request.accepted", request.id] += 1
        request.accepted_at = self.now
        self.pending.append(request)
        if apply_now:
            self.apply()

    def _adjustment(self, amount: int, **fields: Any) -> Adjustment:
        return Adjustment(user_id=self.user, points_type=self.points_type.name, amount=amount,
                          **fields)  # fmt: skip

    @rule(amount=st.integers(1, 100), hours=st.none() | st.integers(1, 2), now=st.booleans())
    def earn(self, amount: int, hours: int | None, now: bool) -> None:
        expires, at = self._deadline(hours)
        self._accept(Request(0, "adjust", amount, expires=expires),
                     self._adjustment(amount, expires_at=at), now)  # fmt: skip

    @rule(amount=st.integers(1, 80), forced=st.booleans(), now=st.booleans())
    def spend(self, amount: int, forced: bool, now: bool) -> None:
        self._accept(Request(0, "adjust", -amount, forced=forced),
                     self._adjustment(-amount, allow_negative=forced), now)  # fmt: skip

    @rule(amount=st.integers(1, 80), hours=st.none() | st.integers(1, 2), now=st.booleans())
    def hold(self, amount: int, hours: int | None, now: bool) -> None:
        expires, at = self._deadline(hours)
        request = Request(0, "hold", amount, expires=expires)
        self._accept(
            request, self._adjustment(amount, expires_at=at, entry_type=Operation.HOLD), now
        )
        self.holds.append(request.id)

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), amount=st.integers(0, 90), whole=st.booleans(), now=st.booleans())
    def capture(self, data: st.DataObject, amount: int, whole: bool, now: bool) -> None:
        hold = data.draw(st.sampled_from(self.holds))
        amount = 0 if whole else amount
        self._accept(
            Request(0, "capture", amount, subject=hold),
            self._adjustment(amount, related_id=str(hold), entry_type=Operation.CAPTURE),
            now,
        )

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), now=st.booleans())
    def release(self, data: st.DataObject, now: bool) -> None:
        hold = data.draw(st.sampled_from(self.holds))
        self._accept(
            Request(0, "release", subject=hold),
            self._adjustment(0, related_id=str(hold), entry_type=Operation.RELEASE),
            now,
        )

    @precondition(lambda self: self.reversible)
    @rule(data=st.data(), forced=st.booleans(), now=st.booleans())
    def reverse(self, data: st.DataObject, forced: bool, now: bool) -> None:
        # Mostly entries not reversed yet (a second reversal is refused at once).
        fresh = [s for s in self.reversible if s not in self.live_reversals]
        subject = data.draw(st.sampled_from(fresh or self.reversible))
        with self.env.sessions() as session:
            entry = session.query(LedgerEntry).filter_by(request_id=subject).one()
            session.expunge(entry)
        request = Request(0, "reversal", forced=forced, subject=subject)
        try:
            self._accept(request, reversal_of(entry, self.user, force=forced))
        except SubjectTaken:
            assert subject in self.live_reversals
            return
        assert subject not in self.live_reversals
        self.live_reversals[subject] = request.id
        if now:
            self.apply()

    # Mostly unfreezing: a frozen account refuses nearly everything.
    @rule(frozen=st.sampled_from([True, False, False]))
    def freeze(self, frozen: bool) -> None:
        if not self.account_id:
            return
        # Applied in order: what is pending is applied before the account changes.
        self.apply()
        with transaction(self.env.sessions) as session:
            session.execute(
                text("UPDATE accounts SET status = :status WHERE id = :id"),
                {"status": "frozen" if frozen else "active", "id": self.account_id},
            )
        if frozen != self.model.frozen_status:
            self.expected_events["account.frozen" if frozen else "account.unfrozen", None] += 1
        self.model.frozen_status = frozen
        self._compare_events()

    # Time

    @rule(hours=st.integers(1, 2))
    def time_passes(self, hours: int) -> None:
        self.now += hours
        shift = {"shift": hours * HOUR, "tenant": self.principal.tenant_id}
        with transaction(self.env.sessions) as session:
            for table in ("lots", "holds"):
                session.execute(
                    text(f"UPDATE {table} SET expires_at = expires_at - :shift"
                         " WHERE tenant_id = :tenant"),
                    shift,
                )  # fmt: skip
            # A pending request was accepted that much earlier too (a capture accepted
            # before its hold timed out stays accepted before).
            session.execute(
                text("UPDATE adjustment_requests SET expires_at = expires_at - :shift,"
                     " created_at = created_at - :shift"
                     " WHERE tenant_id = :tenant AND status IN ('queued', 'processing')"),
                shift,
            )  # fmt: skip
        # The timers ask once: not for what an expiry or a timeout is pending for already.
        asked = {(r.op, r.subject) for r in self.pending}
        lots = [lot for lot in self.model.due_lots(self.now) if ("expire", lot) not in asked]
        holds = [h for h in self.model.due_holds(self.now) if ("timeout", h) not in asked]
        with transaction(self.env.sessions) as session:
            request_expiries(session, 10_000)
            request_hold_timeouts(session, 10_000)
        new = self._asked()
        by_subject = {(r.op, r.subject): r for r in new}
        expected = [("expire", lot) for lot in lots] + [("timeout", hold) for hold in holds]
        assert [(r.op, r.subject) for r in new] == expected, (new, expected)
        self.pending += [by_subject[key] for key in expected]
        self.apply()

    def _asked(self) -> list[Request]:
        """The expiries and timeouts the timers asked for this account, newest only."""
        with self.env.sessions() as session:
            rows = session.execute(
                text("SELECT id, entry_type, related_id FROM adjustment_requests"
                     " WHERE account_id = :account AND id > :seen ORDER BY id"),
                {"account": self.account_id, "seen": self.seen},
            ).all()  # fmt: skip
        if rows:
            self.seen = rows[-1].id
        return [
            Request(row.id, row.entry_type,
                    subject=self.lots[row.related_id] if row.entry_type == "expire"
                    else int(row.related_id), accepted_at=self.now)
            for row in rows
        ]  # fmt: skip

    # Applying

    @rule()
    def apply(self) -> None:
        if not self.pending:
            return
        while True:
            applied = drain_accounts(
                [self.account_id], redis=self.env.redis, keys=KEYS,
                channel=KEYS.done_channel("model"),
                sessions=self.env.sessions, lock_ttl=10, lock_wait=10, chunk=7,
            )  # fmt: skip
            if not applied.more:
                break
        with self.env.sessions() as session:
            rows = session.execute(
                text("SELECT r.id, r.status, r.error_code, e.ulid FROM adjustment_requests r"
                     " LEFT JOIN ledger_entries e ON e.request_id = r.id"
                     " WHERE r.id = ANY(:ids)"),
                {"ids": [r.id for r in self.pending]},
            ).all()  # fmt: skip
        actual = {row.id: row.error_code or row.status for row in rows}
        for request in self.pending:
            lot = self.model.lots.get(request.subject or 0) if request.op == "expire" else None
            expired_before = lot is not None and lot.expired is not None
            outcome = self.model.apply(request)
            assert actual[request.id] == outcome, (request, actual[request.id], outcome)
            # A lot is closed by its first expiry, even with nothing left in it.
            closes_lot = lot is not None and not expired_before and lot.expired is not None
            self._expect_events(request, outcome, closes_lot)
            if outcome != COMPLETED:
                if request.op == "reversal":
                    del self.live_reversals[request.subject or 0]
                continue
            ulid = next(row.ulid for row in rows if row.id == request.id)
            self.entries[request.id] = ulid
            if request.op == "adjust" and request.expires is not None:
                self.lots[ulid] = request.id
            if request.op in ("adjust", "capture"):
                self.reversible.append(request.id)
        self.pending = []
        self._compare()

    def _expect_events(self, request: Request, outcome: str, closes_lot: bool) -> None:
        """The events applying `request` with `outcome` must have written."""
        made_by_caller = request.op not in ("expire", "timeout")
        if made_by_caller:
            kind = "request.applied" if outcome == COMPLETED else f"request.rejected:{outcome}"
            self.expected_events[kind, request.id] += 1
        if closes_lot:
            self.expected_events["lot.expired", self.entries[request.subject or 0]] += 1
        if outcome != COMPLETED:
            return
        self.expected_events["entry.created", request.id] += 1
        closed = {"capture": "hold.captured", "release": "hold.released",
                  "timeout": "hold.timed_out"}  # fmt: skip
        if request.op == "hold":
            self.expected_events["hold.opened", request.id] += 1
        elif request.op in closed:
            self.expected_events[closed[request.op], request.subject] += 1

    def _compare_events(self) -> None:
        """Number what was committed, read the account's new events, compare with the model."""
        with transaction(self.env.sessions) as session:
            number_events(session)
        with self.env.sessions() as session:
            rows = session.execute(
                text("SELECT id, account_seq, type, payload FROM events"
                     " WHERE account_id = :account AND id > :after ORDER BY id"),
                {"account": self.account_id, "after": self.event_cursor},
            ).all()  # fmt: skip
        keys = {"request": "request_id", "entry": "request_id", "hold": "hold_id",
                "lot": "lot_id", "account": None}  # fmt: skip
        for row in rows:
            self.account_seq += 1
            assert row.account_seq == self.account_seq, (row, self.account_seq)
            if row.type == "entry.created":
                assert row.payload["balance_before"] == self.entry_balance, row
                self.entry_balance = row.payload["balance_after"]
            kind = row.type
            if kind == "request.rejected":
                kind += ":" + row.payload["error"]["code"]
            key = keys[row.type.split(".")[0]]
            self.read_events[kind, None if key is None else row.payload[key]] += 1
            self.event_cursor = row.id
        assert self.read_events == self.expected_events, (
            self.read_events - self.expected_events,
            self.expected_events - self.read_events,
        )
        assert self.entry_balance == self.model.balance

    def _compare(self) -> None:
        self._compare_events()
        with self.env.sessions() as session:
            account = session.execute(
                text("SELECT balance, frozen_balance, total_earned, total_spent, expired_points"
                     " FROM accounts WHERE id = :id"),
                {"id": self.account_id},
            ).one()  # fmt: skip
            lots = session.execute(
                text("SELECT entry_ulid, remaining, expired_amount FROM lots"
                     " WHERE account_id = :id"),
                {"id": self.account_id},
            ).all()  # fmt: skip
        assert dict(zip(("balance", "frozen", "earned", "spent", "expired"), account,
                        strict=True)) == self.model.totals()  # fmt: skip
        assert {self.lots[ulid]: (remaining, expired) for ulid, remaining, expired in lots} == (
            self.model.lot_states()
        )

    @invariant()
    def never_below_what_is_held(self) -> None:
        if not self.model.allow_negative:
            assert self.model.held <= self.model.balance or self.model.held == 0

    def teardown(self) -> None:
        if getattr(self, "account_id", ""):
            self.apply()
            with self.env.sessions() as session:
                assert reconcile(session).violations == []


def test_the_applier_follows_the_reference_model(env: Env) -> None:
    PointsMachine.env = env
    run_state_machine_as_test(
        PointsMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
            phases=list(Phase) if SHRINK else [Phase.explicit, Phase.generate],
        ),
    )
