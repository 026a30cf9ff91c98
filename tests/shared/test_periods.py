"""Period totals, period leaderboards, own ranks and caps, against a reference model.

A Hypothesis state machine records adjustments (some under an exempt context), reversals
and bulk-style chunks for three users of a capped points type, moves a clock across
days, weeks, months and years and to either side of a local month's first moment (in a
tenant time zone with daylight saving or a half-hour offset), and applies each chunk
with `apply_pending` at that clock. After every chunk: each request's outcome and cut
equal the model's; `period_totals` equals a SQL GROUP BY over the entries and the
model's sums, and `period_scores` counts them; every period's board and each user's rank
equal the model's, for each ranking, and each account as of every moment an entry was
made (and just before) equals replaying the model's entries up to it.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared.intake.adjustments import Adjustment, submit
from shared.intake.auth import Principal
from shared.intake.validation import UserRef
from shared.ledger.apply import apply_pending
from shared.ledger.partitions import make_partitions_ahead
from shared.ledger.reconcile import reconcile
from shared.models import Account, LedgerEntry, Operation, Role, Tenant
from shared.platform.config import DEFAULT_POINTS_TYPES, Cap
from shared.platform.db import make_engine, make_session_factory, transaction
from shared.reads.boards import leaderboard, own_rank
from shared.reads.history import Standing, standings
from shared.reads.query_params import LeaderboardQuery, OwnRankQuery
from tests.factories import Factory

EXAMPLES = int(os.environ.get("TALLY_MODEL_EXAMPLES", "120")) // 4
SHRINK = os.environ.get("TALLY_MODEL_SHRINK", "") == "1"
POINTS = "reputation"
EXEMPT = "answer|accepted"
PERIODS = ("day", "week", "month", "quarter", "year", "all")
# A Sunday evening in March, an hour before Europe's clocks go forward.
START = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)


@pytest.fixture
def sessions(own_database: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(own_database, pool_size=4)
    yield make_session_factory(engine)
    engine.dispose()


def starts(period: str, moment: datetime, zone: ZoneInfo) -> date:
    """The first local day of the period `moment` falls in."""
    day = moment.astimezone(zone).date()
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "quarter":
        return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
    if period == "year":
        return day.replace(month=1, day=1)
    return date(1970, 1, 1)


@dataclass
class ModelEntry:
    user: int
    amount: int
    reversal: bool
    at: datetime
    context: str = ""


@dataclass
class Pending:
    request_id: int
    user: int
    amount: int
    context: str
    reverses: int | None = None  # the request whose entry this reverses


def ranked(totals: dict[int, int], ranking: str) -> list[tuple[int, int, int]]:
    """(user, total, place) by total descending, then user id."""
    rows = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    out: list[tuple[int, int, int]] = []
    for index, (user, total) in enumerate(rows):
        if ranking == "row_number" or index == 0 or total != rows[index - 1][1]:
            place = index + 1 if ranking != "dense_rank" else len({t for _, t in rows[:index]}) + 1
        else:
            place = out[-1][2]
        out.append((user, total, place))
    return out


def stored_totals(session: Session, tenant: str) -> list[Any]:
    """The tenant's period totals: (account, period, starts, total, entries, reversal
    total, reversal entries)."""
    return session.execute(
        text(
            "SELECT account_id, period, starts, total, entries, reversal_total,"
            " reversal_entries FROM period_totals WHERE tenant_id = :t ORDER BY 1, 2, 3"
        ),
        {"t": tenant},
    ).all()


def kept_scores(session: Session, tenant: str) -> dict[tuple, int]:
    """The tenant's `period_scores` that count someone: (period, starts, kind, score,
    shard) -> users."""
    rows = session.execute(
        text("SELECT period, starts, kind, score, shard, users FROM period_scores"
             " WHERE tenant_id = :t AND users <> 0"),
        {"t": tenant},
    )  # fmt: skip
    return {tuple(row[:5]): row[5] for row in rows}


def scores_of(totals: list[Any]) -> dict[tuple, int]:
    """How many period totals stand at each (period, starts, kind, score, shard): a total
    without reversals once, as `plain`; one with reversals on the `all` board, on the
    `manual` one at its total without them (if it has another entry), and on the
    `reversals` one at theirs."""
    counted: dict[tuple, int] = defaultdict(int)
    for account, period, day, total, entries, reversal_total, reversal_entries in totals:
        shard = ord(account[-1]) & 3
        reversed_ = reversal_entries > 0
        places = [("plain", total, entries > 0 and not reversed_),
                  ("all", total, reversed_),
                  ("manual", total - reversal_total, reversed_ and entries > reversal_entries),
                  ("reversals", reversal_total, reversed_)]  # fmt: skip
        for kind, score, present in places:
            if present:
                counted[(period, day, kind, score, shard)] += 1
    return dict(counted)


class PeriodMachine(RuleBasedStateMachine):
    sessions: sessionmaker[Session]

    def __init__(self) -> None:
        super().__init__()
        self.clock = START
        self.pending: list[Pending] = []
        self.entries: list[ModelEntry] = []
        self.applied: dict[int, tuple[int, int]] = {}  # request -> (user, amount applied)
        self.reversed: set[int] = set()
        self.used: dict[tuple[int, date], int] = defaultdict(int)

    @initialize(
        zone=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata", "America/New_York"]),
        per=st.sampled_from(["day", "week"]),
        over=st.sampled_from(["cut", "reject"]),
    )
    def open_tenant(self, zone: str, per: str, over: str) -> None:
        factory = Factory(self.sessions)
        caller = factory.caller(Role.MODERATOR)
        self.tenant = caller.tenant_id
        self.principal = Principal(
            caller.user_id, caller.tenant_id, caller.username, "", Role.MODERATOR
        )
        self.users = [factory.user().id for _ in range(3)]
        self.zone = ZoneInfo(zone)
        self.cap = Cap(100, per=per, over=over, exempt_contexts=(EXEMPT,))
        with transaction(self.sessions) as session:
            session.execute(update(Tenant).where(Tenant.id == self.tenant).values(time_zone=zone))

    def _record(self, user: int, adjustment: Adjustment) -> int:
        with transaction(self.sessions) as session:
            recorded = submit(
                session.connection(), self.principal, UserRef("user_id", user_id=user),
                adjustment, DEFAULT_POINTS_TYPES[POINTS], None,
            )  # fmt: skip
        return recorded.request_id

    @rule(
        user=st.integers(0, 2),
        amount=st.integers(-60, 90).filter(bool),
        exempt=st.booleans(),
    )
    def adjust(self, user: int, amount: int, exempt: bool) -> None:
        context = EXEMPT + "|1" if exempt else "vote|up"
        uid = self.users[user]
        adjustment = Adjustment(
            user_id=uid, points_type=POINTS, amount=amount, reputation_context=context
        )
        self.pending.append(Pending(self._record(uid, adjustment), uid, amount, context))

    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        candidates = sorted(set(self.applied) - self.reversed)
        if not candidates:
            return
        original = data.draw(st.sampled_from(candidates))
        self.reversed.add(original)
        user, amount = self.applied[original]
        with self.sessions() as session:
            ulid = session.scalar(
                select(LedgerEntry.ulid).where(LedgerEntry.request_id == original)
            )
        adjustment = Adjustment(
            user_id=user, points_type=POINTS, amount=-amount, related_id=ulid,
            entry_type=Operation.REVERSAL,
        )  # fmt: skip
        self.pending.append(Pending(self._record(user, adjustment), user, -amount, "", original))

    @rule(hours=st.sampled_from([0, 1, 5, 23, 24, 49, 24 * 8, 24 * 40, 24 * 100]))
    def advance(self, hours: int) -> None:
        self.advance_to(self.clock + timedelta(hours=hours, minutes=7))

    @rule(minutes=st.sampled_from([-61, -1, 0, 1, 59, 61, 299]))
    def advance_to_a_month_boundary(self, minutes: int) -> None:
        """To a few minutes either side of the tenant's next local month: where its month
        and its UTC month differ."""
        local = self.clock.astimezone(self.zone)
        first = (local.replace(day=28) + timedelta(days=4)).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0
        )
        moment = (first + timedelta(minutes=minutes)).astimezone(UTC)
        if moment > self.clock:
            self.advance_to(moment)

    def advance_to(self, moment: datetime) -> None:
        self.clock = moment
        # The ledger takes entries only in months with a partition (docs/storage.md): as
        # the beat does, keep them ahead of the clock, which runs years into the future.
        with transaction(self.sessions) as session:
            make_partitions_ahead(session, self.clock, 1)

    @rule()
    def apply(self) -> None:
        """One chunk for every account at the clock: what a bulk batch is for the applier."""
        if not self.pending:
            return
        with transaction(self.sessions) as session:
            ids = session.scalars(select(Account.id).where(Account.tenant_id == self.tenant)).all()
            applied = apply_pending(session, ids, 1000, {POINTS: self.cap}, at=self.clock)
        assert not applied.more
        with self.sessions() as session:
            rows = {
                row.id: row
                for row in session.execute(
                    text("SELECT id, status, error_code, cut FROM adjustment_requests"
                         " WHERE id = ANY(:ids)"),
                    {"ids": [p.request_id for p in self.pending]},
                )
            }  # fmt: skip
        for request in self.pending:
            outcome, cut = self._model_apply(request)
            row = rows[request.request_id]
            assert (row.error_code or row.status, row.cut) == (outcome, cut), request
        self.pending = []

    def _model_apply(self, request: Pending) -> tuple[str, int]:
        amount, cut = request.amount, 0
        capped = (
            request.reverses is None and amount > 0 and not self.cap.exempts(request.context, "")
        )
        if capped:
            key = (request.user, starts(self.cap.per, self.clock, self.zone))
            room = self.cap.amount - self.used[key]
            if room <= 0 or (amount > room and self.cap.over == "reject"):
                return "cap_reached", 0
            cut = max(amount - room, 0)
            amount -= cut
            self.used[key] += amount
        if request.reverses is None:
            self.applied[request.request_id] = (request.user, amount)
        self.entries.append(ModelEntry(request.user, amount, request.reverses is not None,
                                       self.clock, request.context))  # fmt: skip
        return "completed", cut

    def _model_totals(self, period: str, kind: str) -> dict[int, int]:
        wanted = starts(period, self.clock, self.zone)
        totals: dict[int, int] = {}
        for entry in self.entries:
            if starts(period, entry.at, self.zone) != wanted:
                continue
            if (kind == "manual" and entry.reversal) or (
                kind == "reversals" and not entry.reversal
            ):
                continue
            if kind == "votes" and not entry.context.startswith("vote|"):
                continue
            totals[entry.user] = totals.get(entry.user, 0) + entry.amount
        return totals

    @invariant()
    def totals_equal_a_group_by_over_the_entries(self) -> None:
        if not hasattr(self, "tenant"):
            return
        with self.sessions() as session:
            stored = stored_totals(session, self.tenant)
            grouped = session.execute(
                text("SELECT e.account_id, p.period,"
                     " CASE p.period WHEN 'all' THEN DATE '1970-01-01' ELSE"
                     "  date_trunc(p.period, e.created_at AT TIME ZONE tn.time_zone)::date END,"
                     " sum(e.amount), count(*),"
                     " COALESCE(sum(e.amount) FILTER (WHERE e.type = 'reversal'), 0),"
                     " count(*) FILTER (WHERE e.type = 'reversal')"
                     " FROM ledger_entries e JOIN tenants tn ON tn.id = e.tenant_id"
                     " CROSS JOIN unnest(ARRAY['day','week','month','quarter','year','all'])"
                     "  AS p(period)"
                     " WHERE e.tenant_id = :t GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"),
                {"t": self.tenant},
            ).all()  # fmt: skip
        assert [tuple(row) for row in stored] == [tuple(row) for row in grouped]
        # And each board's scores count the period totals standing at them.
        with self.sessions() as session:
            assert kept_scores(session, self.tenant) == scores_of(stored)

    @invariant()
    def boards_and_ranks_equal_the_model(self) -> None:
        if not hasattr(self, "tenant") or self.pending:
            return
        boards = [
            (period, kind, filters)
            for period in PERIODS
            for kind, filters in (
                ("all", {}),
                ("manual", {"exclude_reset": True}),
                ("reversals", {"reputation_type": 11}),
                # A text filter: summed from the entries between the period's bounds.
                ("votes", {"reputation_context": "vote"}),
            )
        ]
        ranking = ("row_number", "rank", "dense_rank")[len(self.entries) % 3]
        with self.sessions() as session:
            for index, (period, kind, filters) in enumerate(boards):
                query = LeaderboardQuery(period=period, at=self.clock, ranking=ranking, **filters)
                expected = ranked(self._model_totals(period, kind), ranking)
                board = leaderboard(session, self.tenant, POINTS, query)
                assert board.count == len(expected)
                assert [(r.user_id, r.total_score, r.rank) for r in board.rows] == expected
                places = {user: (total, place) for user, total, place in expected}
                # One user's own rank a board, in turn (on it or not, whatever the
                # ranking): all three on every board made this test take minutes.
                user = self.users[(len(self.entries) // 3 + index) % len(self.users)]
                row, count, _ = own_rank(
                    session, self.tenant, POINTS,
                    OwnRankQuery(period=period, at=self.clock, ranking=ranking, **filters),
                    user,
                )  # fmt: skip
                assert count == len(expected)
                got = None if row is None else (row.total_score, row.rank)
                assert got == places.get(user), (period, kind, ranking, user)

    @invariant()
    def standings_as_of_each_moment_equal_replaying_the_model(self) -> None:
        """An account as of each moment an entry was made, and just before it: its month
        rows before that moment's local month plus that month's entries, against the
        model's entries up to the moment."""
        if not hasattr(self, "tenant") or self.pending:
            return
        with self.sessions() as session:
            accounts: dict[int, str] = {
                user: account
                for user, account in session.execute(
                    select(Account.user_id, Account.id).where(Account.tenant_id == self.tenant)
                )
            }
            for moment in sorted({entry.at for entry in self.entries}):
                for at in (moment - timedelta(microseconds=1), moment):
                    got = standings(session, list(accounts.values()), at)
                    for user, account in accounts.items():
                        made = [e.amount for e in self.entries if e.user == user and e.at <= at]
                        expected = Standing(
                            sum(made), 0, 0, sum(a for a in made if a > 0),
                            -sum(a for a in made if a < 0), len(made),
                        )  # fmt: skip
                        assert got[account] == expected, (at, user)

    def teardown(self) -> None:
        if hasattr(self, "tenant"):
            with self.sessions() as session:
                assert reconcile(session).violations == []


def test_period_totals_boards_and_caps_follow_the_model(
    sessions: sessionmaker[Session],
) -> None:
    PeriodMachine.sessions = sessions
    run_state_machine_as_test(
        PeriodMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
            phases=list(Phase) if SHRINK else [Phase.explicit, Phase.generate],
        ),
    )


def test_concurrent_appliers_moving_accounts_between_shared_scores_count_them_exactly(
    sessions: sessionmaker[Session],
) -> None:
    """Four appliers at once, each on its own accounts, all moving between the same few
    scores of every board, round after round: none deadlocks, and each score counts
    exactly the period totals standing at it."""
    factory = Factory(sessions)
    caller = factory.caller(Role.MODERATOR)
    principal = Principal(caller.user_id, caller.tenant_id, caller.username, "", Role.MODERATOR)
    users = [factory.user().id for _ in range(16)]
    accounts: dict[int, str] = {}
    moment = datetime(2026, 6, 1, 12, tzinfo=UTC)
    failures: list[BaseException] = []
    for _ in range(8):
        for index, user in enumerate(users):
            with transaction(sessions) as session:
                recorded = submit(
                    session.connection(), principal, UserRef("user_id", user_id=user),
                    Adjustment(user_id=user, points_type=POINTS, amount=10 * (index % 3 + 1)),
                    DEFAULT_POINTS_TYPES[POINTS], None,
                )  # fmt: skip
            accounts[user] = recorded.account_id
        barrier = threading.Barrier(4)

        def chunk(mine: list[str], barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                with transaction(sessions) as session:
                    apply_pending(session, mine, 100, {}, at=moment)
            except BaseException as failure:  # reported by the main thread
                failures.append(failure)

        ids = [accounts[user] for user in users]
        threads = [threading.Thread(target=chunk, args=(ids[n::4],)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    with sessions() as session:
        totals = stored_totals(session, caller.tenant_id)
        kept = kept_scores(session, caller.tenant_id)
        board = leaderboard(
            session, caller.tenant_id, POINTS, LeaderboardQuery(period="day", at=moment)
        )
    assert len(totals) == 16 * len(PERIODS)
    assert kept == scores_of(totals)
    assert board.count == 16 and {row.total_score for row in board.rows} == {80, 160, 240}


def test_concurrent_requests_for_one_account_never_pass_its_cap(
    sessions: sessionmaker[Session],
) -> None:
    """Eight appliers at once on one account with room for 100: 100 applied, not more."""
    factory = Factory(sessions)
    caller = factory.caller(Role.MODERATOR)
    principal = Principal(caller.user_id, caller.tenant_id, caller.username, "", Role.MODERATOR)
    user = factory.user().id
    cap = Cap(100, per="day", over="cut")
    moment = datetime(2026, 6, 1, 23, 59, 59, tzinfo=UTC)
    account = ""
    for _ in range(8):
        with transaction(sessions) as session:
            recorded = submit(
                session.connection(), principal, UserRef("user_id", user_id=user),
                Adjustment(user_id=user, points_type=POINTS, amount=30, comment="vote"),
                DEFAULT_POINTS_TYPES[POINTS], None,
            )  # fmt: skip
            account = recorded.account_id
    barrier = threading.Barrier(8)

    def one_chunk() -> None:
        barrier.wait()
        with transaction(sessions) as session:
            apply_pending(session, [account], 1, {POINTS: cap}, at=moment)

    threads = [threading.Thread(target=one_chunk) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with sessions() as session:
        rows = session.execute(
            text("SELECT r.status, r.error_code, r.cut, e.amount FROM adjustment_requests r"
                 " LEFT JOIN ledger_entries e ON e.request_id = r.id"
                 " WHERE r.account_id = :a ORDER BY r.id"),
            {"a": account},
        ).all()  # fmt: skip
        capped = session.scalar(
            text("SELECT capped FROM period_totals WHERE account_id = :a AND period = 'day'"),
            {"a": account},
        )
    assert [(row.error_code or row.status, row.cut, row.amount) for row in rows] == [
        ("completed", 0, 30), ("completed", 0, 30), ("completed", 0, 30),
        ("completed", 20, 10),
    ] + [("cap_reached", 0, None)] * 4  # fmt: skip
    assert capped == 100
    # A second later is the next day: room again.
    with transaction(sessions) as session:
        submit(
            session.connection(), principal, UserRef("user_id", user_id=user),
            Adjustment(user_id=user, points_type=POINTS, amount=30, comment="vote"),
            DEFAULT_POINTS_TYPES[POINTS], None,
        )  # fmt: skip
    with transaction(sessions) as session:
        applied = apply_pending(
            session, [account], 10, {POINTS: cap}, at=moment + timedelta(seconds=1)
        )
    assert [o.error_code for o in applied.outcomes] == [None]


def test_a_new_time_zone_re_sums_the_tenants_periods_and_keeps_what_counted_to_its_cap(
    sessions: sessionmaker[Session], own_database: str
) -> None:
    """Entries at 20:00 UTC on a Sunday are Monday's in Kolkata: the day and week rows
    move to the new calendar, reconcile agrees, and `capped` stays with its day."""
    from click.testing import CliRunner

    from cli.main import cli

    factory = Factory(sessions)
    caller = factory.caller(Role.MODERATOR)
    principal = Principal(caller.user_id, caller.tenant_id, caller.username, "", Role.MODERATOR)
    user = factory.user().id
    sunday_evening = datetime(2026, 5, 31, 20, 0, tzinfo=UTC)
    saturday_noon = datetime(2026, 5, 30, 12, 0, tzinfo=UTC)
    for moment, amount in ((saturday_noon, 40), (sunday_evening, 25)):
        with transaction(sessions) as session:
            recorded = submit(
                session.connection(), principal, UserRef("user_id", user_id=user),
                Adjustment(user_id=user, points_type=POINTS, amount=amount, comment="x"),
                DEFAULT_POINTS_TYPES[POINTS], None,
            )  # fmt: skip
        with transaction(sessions) as session:
            apply_pending(session, [recorded.account_id], 10, {POINTS: Cap(1000)}, at=moment)

    def days() -> dict[tuple[str, date], tuple[int, int]]:
        with sessions() as session:
            rows = session.execute(
                text("SELECT period, starts, total, capped FROM period_totals"
                     " WHERE tenant_id = :t AND period IN ('day', 'week')"),
                {"t": caller.tenant_id},
            )  # fmt: skip
            return {(r.period, r.starts): (r.total, r.capped) for r in rows}

    assert days() == {
        ("day", date(2026, 5, 30)): (40, 40), ("day", date(2026, 5, 31)): (25, 25),
        ("week", date(2026, 5, 25)): (65, 65),
    }  # fmt: skip
    runner = CliRunner(env={"TALLY_DATABASE_URL": own_database})
    result = runner.invoke(cli, ["tenants", "time-zone", caller.tenant_id, "Asia/Kolkata",
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["time_zone"] == "Asia/Kolkata"
    assert days() == {
        ("day", date(2026, 5, 30)): (40, 40), ("day", date(2026, 6, 1)): (25, 0),
        ("week", date(2026, 5, 25)): (40, 65), ("week", date(2026, 6, 1)): (25, 0),
    }  # fmt: skip
    with sessions() as session:
        assert reconcile(session).violations == []
    unknown = runner.invoke(cli, ["tenants", "time-zone", caller.tenant_id, "Mars/Olympus"])
    assert unknown.exit_code == 2 and "Mars/Olympus" in unknown.output
