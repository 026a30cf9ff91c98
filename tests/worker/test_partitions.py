"""The partitioned ledger and the idempotency window (migration 0011, docs/storage.md).

Each test has a migrated database of its own: partitions are the database's, and the
retention job deletes across tenants.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from shared.flow.backlog import outbox
from shared.intake.adjustments import Adjustment, reversal_of, submit
from shared.intake.auth import Principal
from shared.intake.validation import UserRef
from shared.ledger.apply import apply_pending
from shared.ledger.reconcile import reconcile
from shared.ledger.timers import request_expiries
from shared.models import AdjustmentStatus, Batch, LedgerEntry, Role, new_ulid
from shared.platform.config import DEFAULT_POINTS_TYPES, Settings
from shared.platform.db import transaction
from shared.reads.boards import leaderboard
from shared.reads.history import export, standings, statement
from shared.reads.ledger_reads import list_scores
from shared.reads.query_params import LeaderboardQuery, ScoreListQuery
from tests.factories import Factory, assert_ledger_consistent
from worker.app import FORGET_REQUESTS_TASK, PARTITION_LEDGER_TASK, TallyCelery, make_celery

POINTS = DEFAULT_POINTS_TYPES["points"]

PARTITION_OF_ENTRY = text("""
    SELECT e.tableoid::regclass::text FROM ledger_entries e
    JOIN adjustment_requests r ON r.ledger_entry_id = e.id
    WHERE r.id = :id
""")


@pytest.fixture
def app(own_database: str, base_settings: Settings) -> Iterator[TallyCelery]:
    app = make_celery(
        base_settings.with_overrides(
            {"database_url": own_database, "queue_name": "tally-partition-tests"}
        )
    )
    app.loader.import_default_modules()
    yield app
    app.resources.close()


class Desk:
    """Accepts adjustments as the API does (shared.intake.adjustments.submit)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.factory = Factory(sessions)
        caller = self.factory.caller()
        self.principal = Principal(
            caller.user_id, caller.tenant_id, caller.username, "", Role.MODERATOR
        )
        self.user = self.factory.user()

    def submit(self, amount: int, key: str | None = None, **fields: object) -> tuple[int, bool]:
        """Accept one adjustment for the desk's user; (request id, whether it is new)."""
        adjustment = Adjustment(
            user_id=self.user.id, points_type=POINTS.name, amount=amount, **fields
        )  # type: ignore[arg-type]
        return self.submit_adjustment(adjustment, key)

    def submit_adjustment(self, adjustment: Adjustment, key: str | None) -> tuple[int, bool]:
        with transaction(self.sessions) as session:
            recorded = submit(
                session.connection(), self.principal, UserRef("user_id", user_id=self.user.id),
                adjustment, POINTS, key,
            )  # fmt: skip
        return recorded.request_id, recorded.created

    def apply(self, at: datetime | None = None) -> None:
        with transaction(self.sessions) as session:
            account = self.account(session)
            apply_pending(session, [account], 100, at=at)

    def account(self, session: Session) -> str:
        return str(
            session.scalar(
                text("SELECT id FROM accounts WHERE user_id = :user AND points_type = :type"),
                {"user": self.user.id, "type": POINTS.name},
            )
        )

    def partition_of(self, request_id: int) -> str:
        with self.sessions() as session:
            return str(session.scalar(PARTITION_OF_ENTRY, {"id": request_id}))


def month_name(at: datetime) -> str:
    return f"ledger_entries_{at:%Y_%m}"


def months_after(at: datetime, months: int) -> datetime:
    month = at.year * 12 + at.month - 1 + months
    return datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC)


def test_entries_land_in_the_partition_of_their_month(app: TallyCelery) -> None:
    """An entry goes to the month it was made in, up to the last millisecond of that
    month; one made before the migration's next month goes to the first partition; a
    reversal reads its entry in another month; and a month with no partition refuses
    entries rather than taking them elsewhere."""
    desk = Desk(app.resources.sessions)
    now = datetime.now(UTC)
    may = months_after(now, 2)
    with transaction(desk.sessions) as session:
        session.execute(text("SELECT ledger_entries_partition(CAST(:at AS date))"), {"at": may})
    end_of_april = may - timedelta(milliseconds=1)

    first, _ = desk.submit(5)
    desk.apply()
    earlier, _ = desk.submit(7)
    desk.apply(at=months_after(now, 1) + timedelta(days=3))
    last_ms, _ = desk.submit(11)
    desk.apply(at=end_of_april)
    first_ms, _ = desk.submit(13)
    desk.apply(at=may)
    assert desk.partition_of(first) == "ledger_entries_initial"
    assert desk.partition_of(earlier) == month_name(months_after(now, 1))
    assert desk.partition_of(last_ms) == month_name(end_of_april)
    assert desk.partition_of(first_ms) == month_name(may)

    with desk.sessions() as session:
        entry = session.scalars(
            select_entry := text("SELECT id FROM ledger_entries WHERE request_id = :id"),
            {"id": earlier},
        ).one()
        original = session.get_one(LedgerEntry, entry)
    reversal, _ = desk.submit_adjustment(reversal_of(original, desk.user.id), None)
    desk.apply(at=may + timedelta(days=1))
    assert desk.partition_of(reversal) == month_name(may)
    with desk.sessions() as session:
        assert session.scalar(select_entry, {"id": reversal}) is not None
        assert_ledger_consistent(session, desk.account(session))

    beyond, _ = desk.submit(17)
    with pytest.raises(IntegrityError, match="no partition of relation"):
        desk.apply(at=months_after(now, 12 * 30))
    with desk.sessions() as session:
        status = session.scalar(
            text("SELECT status FROM adjustment_requests WHERE id = :id"), {"id": beyond}
        )
        assert status == AdjustmentStatus.QUEUED
        assert reconcile(session).violations == []


def test_the_beat_makes_the_partitions_of_the_months_ahead(app: TallyCelery) -> None:
    """The migration made the next three months; beat's hourly task keeps three months
    ahead: a partition missing (as the fourth month is, once a month has passed) is made,
    and entries of that month land in it."""
    schedule = app.conf.beat_schedule["partition-ledger"]
    assert schedule["task"] == PARTITION_LEDGER_TASK
    assert schedule["schedule"] == timedelta(hours=1)
    now = datetime.now(UTC)
    furthest = months_after(now, 3)
    horizon = (months_after(now, 4) - now).total_seconds()
    assert ahead(app) == pytest.approx(horizon, abs=60)
    with transaction(app.resources.sessions) as session:
        session.execute(text(f"ALTER TABLE ledger_entries DETACH PARTITION {month_name(furthest)}"))
        session.execute(text(f"DROP TABLE {month_name(furthest)}"))
        assert (
            session.scalar(text("SELECT to_regclass(:name)"), {"name": month_name(furthest)})
            is None
        )

    assert ahead(app) == pytest.approx((furthest - now).total_seconds(), abs=60)

    made = app.tasks[PARTITION_LEDGER_TASK].apply().get()

    assert made == [month_name(months_after(furthest, -n)) for n in (2, 1, 0)]
    desk = Desk(app.resources.sessions)
    request, _ = desk.submit(3)
    desk.apply(at=furthest + timedelta(days=27))
    assert desk.partition_of(request) == month_name(furthest)
    again = app.tasks[PARTITION_LEDGER_TASK].apply().get()
    assert again == made
    assert ahead(app) == pytest.approx(horizon, abs=60)


def ahead(app: TallyCelery) -> float:
    """The gauge tally_ledger_partitions_ahead_seconds, as the API's scrape reads it."""
    with app.resources.sessions() as session:
        return outbox(session).partitions_ahead_seconds


def test_retention_forgets_only_adjustments_past_the_idempotency_window(
    app: TallyCelery,
) -> None:
    """Beat's retention (every five minutes) deletes the request rows of final
    adjustments accepted more than TALLY_IDEMPOTENCY_WINDOW_DAYS ago, and nothing else:
    within the window a key sent again finds its first request; after it, the key makes
    a new adjustment. Pending requests, the requests of reversals (one live request per
    subject) and of holds stay; a lot whose request is gone still expires; the ledger
    still reconciles."""
    assert app.resources.settings.idempotency_window_days == 30
    schedule = app.conf.beat_schedule["forget-requests"]
    assert schedule["task"] == FORGET_REQUESTS_TASK
    assert schedule["schedule"] == timedelta(minutes=5)
    desk = Desk(app.resources.sessions)
    old, _ = desk.submit(10, "old")
    expiring, _ = desk.submit(20, "expiring", expires_at=datetime.now(UTC) + timedelta(days=1))
    inside, _ = desk.submit(30, "inside")
    rejected, _ = desk.submit(-1_000, "rejected")
    desk.apply()
    with desk.sessions() as session:
        entry_id = session.scalar(
            text("SELECT id FROM ledger_entries WHERE request_id = :id"), {"id": old}
        )
        original = session.get_one(LedgerEntry, entry_id)
    reversal, _ = desk.submit_adjustment(reversal_of(original, desk.user.id), "reversal")
    desk.apply()
    pending, _ = desk.submit(40, "pending")
    ages = {old: 31, expiring: 31, rejected: 31, reversal: 31, pending: 31, inside: 29}
    with transaction(desk.sessions) as session:
        for request_id, days in ages.items():
            session.execute(
                text("UPDATE adjustment_requests SET created_at = now() - make_interval(days => :d)"
                     " WHERE id = :id"),
                {"d": days, "id": request_id},
            )  # fmt: skip
        entries_before = session.scalar(text("SELECT count(*) FROM ledger_entries"))

    forgotten = app.tasks[FORGET_REQUESTS_TASK].apply().get()

    with desk.sessions() as session:
        kept = set(
            session.scalars(
                text("SELECT id FROM adjustment_requests WHERE id = ANY(:ids)"),
                {"ids": list(ages)},
            )
        )
        assert kept == {inside, reversal, pending}
        assert forgotten == 3
        assert session.scalar(text("SELECT count(*) FROM ledger_entries")) == entries_before
    assert desk.submit(30, "inside") == (inside, False)
    again, created = desk.submit(10, "old")
    assert created and again not in ages
    assert app.tasks[FORGET_REQUESTS_TASK].apply().get() == 0

    # The lot of a forgotten request still expires.
    with transaction(desk.sessions) as session:
        session.execute(
            text("UPDATE lots SET expires_at = now() - interval '1 second' WHERE entry_ulid ="
                 " (SELECT ulid FROM ledger_entries WHERE request_id = :id)"),
            {"id": expiring},
        )  # fmt: skip
        assert request_expiries(session, 10) == [desk.account(session)]
    desk.apply()
    with desk.sessions() as session:
        expired = session.scalar(
            text("SELECT expired_points FROM accounts WHERE id = :id"),
            {"id": desk.account(session)},
        )
        assert expired == 20
        assert_ledger_consistent(session, desk.account(session))
        assert reconcile(session, 30).violations == []

    # A batch past the window whose requests are gone keeps its counts, unchecked.
    with transaction(desk.sessions) as session:
        session.add(
            Batch(id=new_ulid(), tenant_id=desk.principal.tenant_id, idempotency_key="gone",
                  fingerprint="x", total=1, completed=1, created_by=desk.principal.user_id,
                  created_at=datetime.now(UTC) - timedelta(days=31))
        )  # fmt: skip
    with desk.sessions() as session:
        assert reconcile(session, 30).violations == []
        assert [v.check for v in reconcile(session, 0).violations] == ["batch"]


def test_tally_db_partitions_lists_and_makes_them(own_database: str) -> None:
    """`tally db partitions`: the first partition, then the months, with bounds, rows and
    size; `--make-ahead N` first makes this month's and the next N (the ones missing)."""
    runner = CliRunner(env={"TALLY_DATABASE_URL": own_database})

    def listed(*args: str) -> list[dict[str, Any]]:
        result = runner.invoke(cli, ["db", "partitions", *args, "--json"])
        assert result.exit_code == 0, result.output
        return list(json.loads(result.stdout))

    now = datetime.now(UTC)
    months = [month_name(months_after(now, n)) for n in range(1, 6)]
    first = listed()
    assert [p["name"] for p in first] == ["ledger_entries_initial", *months[:3]]
    assert first[0]["bounds"].startswith("FOR VALUES FROM (MINVALUE) TO (")
    assert all(p["bytes"] > 0 for p in first)
    assert [p["name"] for p in listed("--make-ahead", "5")] == [
        "ledger_entries_initial",
        *months,
    ]


COPY_ENTRY = """
    INSERT INTO ledger_entries (ulid, tenant_id, account_id, points_type, request_id, amount,
                                balance_before, balance_after, negative_allowed, type,
                                reputation_type, reputation_context, comment, reason, source,
                                related_id, created_by, created_at)
    SELECT ulid_floor(created_at) || '', tenant_id, account_id, points_type, {request},
           amount, balance_before, balance_after, negative_allowed, type, reputation_type,
           reputation_context, comment, reason, source, related_id, created_by, created_at
    FROM ledger_entries WHERE request_id = :id
"""


@pytest.mark.parametrize(
    ("copied", "request_id", "index"),
    [("entry", "request_id", "request"), ("reversal", "request_id + 1000000", "one_reversal")],
)
def test_a_monthly_partition_refuses_a_second_entry_of_a_request_or_subject(
    app: TallyCelery, copied: str, request_id: str, index: str
) -> None:
    """The indexes ledger_entries_partition() makes on each month: one entry per request,
    one reversal per entry (as the first partition's, kept from the table it was)."""
    desk = Desk(app.resources.sessions)
    month = months_after(datetime.now(UTC), 1)
    earned, _ = desk.submit(5)
    desk.apply(at=month + timedelta(days=1))
    with desk.sessions() as session:
        original = session.scalars(
            text("SELECT id FROM ledger_entries WHERE request_id = :id"), {"id": earned}
        ).one()
        entry = session.get_one(LedgerEntry, original)
    reversal, _ = desk.submit_adjustment(reversal_of(entry, desk.user.id), None)
    desk.apply(at=month + timedelta(days=2))
    assert desk.partition_of(reversal) == month_name(month)
    subject = earned if copied == "entry" else reversal
    copy = text(COPY_ENTRY.format(request=request_id))
    with (
        pytest.raises(IntegrityError, match=f"{month_name(month)}_{index}"),
        transaction(desk.sessions) as session,
    ):
        session.execute(copy, {"id": subject})


@contextmanager
def locked(sessions: sessionmaker[Session], *tables: str) -> Iterator[None]:
    """Hold ACCESS EXCLUSIVE locks on `tables` in a transaction of their own: a query that
    plans one of them waits for it; one that pruned it at planning does not."""
    with sessions() as holder:
        for table in tables:
            holder.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        yield
        holder.rollback()


def test_reads_of_a_span_plan_only_the_partitions_of_its_months(app: TallyCelery) -> None:
    """The history and the boards bound the entries' ULIDs as well as their times, so
    PostgreSQL plans (and locks, and reads) only the partitions of the months asked for:
    with the other months' partitions locked, the reads of a span still answer, and
    answer what its entries made (a statement and a balance as of a moment read the
    months before, never those after)."""
    desk = Desk(app.resources.sessions)
    now = datetime.now(UTC)
    month, later = months_after(now, 1), months_after(now, 2)
    for amount, at in ((5, None), (7, month + timedelta(days=10)), (11, later)):
        desk.submit(amount)
        desk.apply(at=at)
    begins, ends = month + timedelta(days=5), month + timedelta(days=20)
    tenant = desk.factory.tenant_id
    sessions = app.resources.sessions

    with sessions() as session:
        account = desk.account(session)
        session.execute(text("SET lock_timeout = '2s'"))
        with locked(sessions, "ledger_entries_initial", month_name(later)):
            _, rows = list_scores(
                session, tenant, POINTS.name,
                ScoreListQuery(created_after=begins, created_before=ends),
            )  # fmt: skip
            assert [entry.amount for entry, _, _ in rows] == [7]
            board = leaderboard(
                session, tenant, POINTS.name,
                LeaderboardQuery(reputed_at_from=begins, reputed_at_to=ends),
            )  # fmt: skip
            assert [row.total_score for row in board.rows] == [7]
            exported = b"".join(
                export(session.connection(), tenant, "entries", "csv", begins, ends, 0)
            )
            assert len(exported.splitlines()) == 2
        # What an account was, and its statement's opening, need the months before.
        with locked(sessions, month_name(later)):
            assert standings(session, [account], ends)[account].balance == 12
            found = statement(session, account, begins, ends, after=0, limit=10)
            assert [entry.amount for entry in found.entries] == [7]
            assert (found.opening.balance, found.closing.balance) == (5, 12)
