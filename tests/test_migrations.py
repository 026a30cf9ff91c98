"""Migration history: a database created at any revision upgrades to head, data intact.

For every revision R before head, a fresh database is migrated to R, given rows written
with raw SQL valid at R (a tenant, users, a token, accounts, requests completed,
rejected and queued, the ledger entries of the completed ones and, once the table
exists, a batch), then migrated to head. Its rows must be unchanged, the ledger must
reconcile, the token must still authenticate, the worker (shared.ledger.apply.apply_pending)
must apply the requests left queued, and the accept function (shared.intake.adjustments.submit)
must record new ones, replays of old keys included.

Migrations are append-only from now on. Issue 14 found that 0001 was edited after 0002
and 0003 had landed, so a database created by the main of that time need not match the
0001 in this tree; that old 0001 cannot be recreated here, so these tests only prove that
the current chain works from every revision. Never edit a migration that has landed
(migrations/versions/000[1-7]*.py): change the schema with a new revision, and the
model drift test below keeps shared.models and the migrations in agreement.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import CheckConstraint, Connection, Engine, select, text

from cli.main import cli
from shared.intake.adjustments import Adjustment, reversal_of, submit
from shared.intake.auth import authenticate, hash_token
from shared.intake.validation import UserRef
from shared.ledger.apply import apply_pending
from shared.ledger.periods import recount_scores
from shared.ledger.reconcile import reconcile
from shared.models import Base, LedgerEntry, Operation, new_ulid
from shared.platform.config import DEFAULT_POINTS_TYPES
from shared.platform.db import make_engine, make_session_factory, transaction
from shared.platform.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    include_object,
    upgrade,
)
from tests.conftest import Services, _create_database, _drop_database

# Oldest first: 0001, 0002, ..., head.
HISTORY = [
    script.revision
    for script in reversed(list(ScriptDirectory.from_config(alembic_config("")).walk_revisions()))
]
HEAD = HISTORY[-1]
TENANT = "mig"
# Tables a migration fills afresh from others (0014: the board scores, from the totals).
RECOUNTED = {"period_scores"}
TOKEN = "tly_migration-test-token"
REPUTATION = DEFAULT_POINTS_TYPES["reputation"]
POINTS = DEFAULT_POINTS_TYPES["points"]


def reached(revision: str, wanted: str) -> bool:
    """Whether a database at `revision` has the schema of `wanted`."""
    return HISTORY.index(revision) >= HISTORY.index(wanted)


@pytest.fixture
def blank_database(services: Services) -> Iterator[str]:
    """An empty database of this test's own (no migration run), dropped afterwards."""
    url, name = _create_database(services.database_url, prefix="mig")
    yield url
    _drop_database(services.database_url, name)


@pytest.fixture
def engine(blank_database: str) -> Iterator[Engine]:
    engine = make_engine(blank_database, pool_size=2)
    yield engine
    engine.dispose()


@dataclass
class Seeded:
    """What `seed` wrote: ids to find the rows again, and what applying them should give."""

    moderator: int
    alice: int
    bob: int
    alice_account: str
    bob_account: str
    requests: dict[str, int] = field(default_factory=dict)
    queued: list[str] = field(default_factory=list)
    batch_id: str | None = None


class Seeder:
    """Raw SQL inserts of the rows the product wrote at `revision` (no model, no ORM)."""

    def __init__(self, connection: Connection, revision: str) -> None:
        self.connection = connection
        self.revision = revision

    def scalar(self, sql: str, **values: Any) -> Any:
        return self.connection.execute(text(sql), values).scalar_one()

    def user(self, username: str, role: str, external_id: str | None = None) -> int:
        return self.scalar(
            "INSERT INTO users (tenant_id, username, external_id, real_name, email, avatar,"
            " description, role) VALUES (:tenant, :username, :external_id, :real_name, '', '',"
            " '', :role) RETURNING id",
            tenant=TENANT, username=username, external_id=external_id,
            real_name=username.title(), role=role,
        )  # fmt: skip

    def token(self, user_id: int) -> None:
        if reached(self.revision, "0004"):  # expires_at and last_used_at
            self.scalar(
                "INSERT INTO tokens (tenant_id, user_id, name, token_hash, expires_at,"
                " last_used_at) VALUES (:tenant, :user_id, 'ops', :hash,"
                " now() + interval '30 days', now() - interval '1 hour') RETURNING id",
                tenant=TENANT, user_id=user_id, hash=hash_token(TOKEN),
            )  # fmt: skip
        else:
            self.scalar(
                "INSERT INTO tokens (tenant_id, user_id, name, token_hash)"
                " VALUES (:tenant, :user_id, 'ops', :hash) RETURNING id",
                tenant=TENANT, user_id=user_id, hash=hash_token(TOKEN),
            )  # fmt: skip

    def account(self, user_id: int, points_type: str, totals: tuple[int, int, int]) -> str:
        balance, earned, spent = totals
        kind = DEFAULT_POINTS_TYPES[points_type]
        return self.scalar(
            "INSERT INTO accounts (id, tenant_id, user_id, points_type, allow_negative,"
            " balance, frozen_balance, expired_points, total_earned, total_spent,"
            " exchange_rate, status, version) VALUES (:id, :tenant, :user_id, :points_type,"
            " :allow_negative, :balance, 0, 0, :earned, :spent, :rate, 'active', 3)"
            " RETURNING id",
            id=new_ulid(), tenant=TENANT, user_id=user_id, points_type=points_type,
            allow_negative=kind.allow_negative, balance=balance, earned=earned, spent=spent,
            rate=kind.exchange_rate,
        )  # fmt: skip

    def batch(self, key: str, created_by: int, total: int, completed: int) -> str:
        if reached(self.revision, "0005"):  # the batch keeps its counts
            return self.scalar(
                "INSERT INTO batches (id, tenant_id, idempotency_key, fingerprint, total,"
                " created_by, completed, rejected) VALUES (:id, :tenant, :key, :digest,"
                " :total, :created_by, :completed, 0) RETURNING id",
                id=new_ulid(), tenant=TENANT, key=key, digest="b" * 64, total=total,
                created_by=created_by, completed=completed,
            )  # fmt: skip
        return self.scalar(
            "INSERT INTO batches (id, tenant_id, idempotency_key, fingerprint, total,"
            " created_by) VALUES (:id, :tenant, :key, :digest, :total, :created_by)"
            " RETURNING id",
            id=new_ulid(), tenant=TENANT, key=key, digest="b" * 64, total=total,
            created_by=created_by,
        )  # fmt: skip

    def request(
        self,
        key: str,
        account: str,
        user_id: int,
        created_by: int,
        adjustment: Adjustment,
        status: str,
        batch_id: str | None = None,
        error_code: str | None = None,
    ) -> int:
        final = status in ("completed", "rejected")
        return self.scalar(
            "INSERT INTO adjustment_requests (tenant_id, idempotency_key, fingerprint,"
            " account_id, user_id, amount, entry_type, reputation_context, comment, reason,"
            " source, related_id, expires_at, allow_negative, created_by, batch_id, status,"
            " attempts, error_code, error_message, started_at, completed_at)"
            " VALUES (:tenant, :key, :fingerprint, :account, :user_id, :amount, 'adjust',"
            " :context, :comment, :reason, :source, :related_id, NULL, false, :created_by,"
            " :batch_id, :status, :attempts, :error_code, :error_message,"
            " CASE WHEN :final THEN now() END, CASE WHEN :final THEN now() END) RETURNING id",
            tenant=TENANT, key=key, fingerprint=adjustment.fingerprint(), account=account,
            user_id=user_id, amount=adjustment.amount, context=adjustment.reputation_context,
            comment=adjustment.comment, reason=adjustment.reason, source=adjustment.source,
            related_id=adjustment.related_id, created_by=created_by, batch_id=batch_id,
            status=status, attempts=1 if final else 0, error_code=error_code,
            error_message=None if error_code is None else "the balance may not go below zero",
            final=final,
        )  # fmt: skip

    def entry(self, request_id: int, before: int) -> None:
        """The ledger entry of a completed request, copied from it as the applier did."""
        entry_id = self.scalar(
            "INSERT INTO ledger_entries (ulid, tenant_id, account_id, points_type, request_id,"
            " amount, balance_before, balance_after, negative_allowed, type, reputation_type,"
            " reputation_context, comment, reason, source, related_id, idempotency_key,"
            " expires_at, created_by)"
            " SELECT :ulid, r.tenant_id, r.account_id, a.points_type, r.id, r.amount,"
            " :before, :before + r.amount, a.allow_negative OR r.allow_negative, r.entry_type,"
            " 10, r.reputation_context, r.comment, r.reason, r.source, r.related_id,"
            " r.idempotency_key, r.expires_at, r.created_by"
            " FROM adjustment_requests r JOIN accounts a ON a.id = r.account_id"
            " WHERE r.id = :request_id RETURNING id",
            ulid=new_ulid(), before=before, request_id=request_id,
        )  # fmt: skip
        self.connection.execute(
            text("UPDATE adjustment_requests SET ledger_entry_id = :entry WHERE id = :id"),
            {"entry": entry_id, "id": request_id},
        )
        if reached(self.revision, "0010"):
            # Counted in its periods (adjustments, in UTC), as the applier does; from 0013
            # with what it earned or spent (nothing frozen or expired).
            figures = reached(self.revision, "0013")
            self.connection.execute(
                text(
                    "INSERT INTO period_totals AS t (account_id, period, starts, tenant_id,"
                    " points_type, user_id, total, entries, reversal_total, reversal_entries,"
                    " capped" + (", earned_total, spent_total)" if figures else ")") +
                    " SELECT e.account_id, p.period, CASE p.period WHEN 'all'"
                    " THEN DATE '1970-01-01' ELSE date_trunc(p.period,"
                    " e.created_at AT TIME ZONE 'UTC')::date END, e.tenant_id, e.points_type,"
                    " a.user_id, e.amount, 1, 0, 0, 0" +
                    (", greatest(e.amount, 0), greatest(-e.amount, 0)" if figures else "") +
                    " FROM ledger_entries e JOIN accounts a ON a.id = e.account_id"
                    " CROSS JOIN unnest(ARRAY['day', 'week', 'month', 'quarter', 'year',"
                    " 'all']) AS p(period) WHERE e.id = :entry"
                    " ON CONFLICT (account_id, period, starts) DO UPDATE"
                    " SET total = t.total + excluded.total, entries = t.entries + 1" +
                    (", earned_total = t.earned_total + excluded.earned_total,"
                     " spent_total = t.spent_total + excluded.spent_total" if figures else "")
                ),
                {"entry": entry_id},
            )  # fmt: skip
        if reached(self.revision, "0012"):
            # And each board's scores counted afresh from them.
            tenant = self.connection.scalar(
                text("SELECT tenant_id FROM ledger_entries WHERE id = :entry"), {"entry": entry_id}
            )
            recount_scores(self.connection, tenant)


def reputation(amount: int, context: str = "", comment: str = "") -> Adjustment:
    return Adjustment(None, "reputation", amount, reputation_context=context, comment=comment)


def points(amount: int, reason: str = "", source: str = "", related_id: str = "") -> Adjustment:
    return Adjustment(None, "points", amount, reason=reason, source=source, related_id=related_id)


def seed(connection: Connection, revision: str) -> Seeded:
    """Representative rows at `revision`: alice's reputation (9 after two entries, a batch
    item and one request queued), bob's points (100, a rejected spend, a batch item and a
    spend queued)."""
    at = Seeder(connection, revision)
    connection.execute(
        text("INSERT INTO tenants (id, name) VALUES (:t, 'Migrated')"), {"t": TENANT}
    )
    moderator = at.user("mod", "moderator")
    alice = at.user("alice", "user", external_id="ext-alice")
    bob = at.user("bob", "user")
    at.token(moderator)
    seeded = Seeded(
        moderator, alice, bob,
        alice_account=at.account(alice, "reputation", (9, 12, 3)),
        bob_account=at.account(bob, "points", (100, 100, 0)),
    )  # fmt: skip
    if reached(revision, "0003"):
        seeded.batch_id = at.batch("batch-1", moderator, total=2, completed=1)
    requests = seeded.requests

    def record(key: str, account: str, user: int, adjustment: Adjustment, status: str,
               **more: Any) -> int:  # fmt: skip
        requests[key] = at.request(key, account, user, moderator, adjustment, status, **more)
        if status == "queued":
            seeded.queued.append(key)
        return requests[key]

    a, b = seeded.alice_account, seeded.bob_account
    at.entry(record("old-1", a, alice, reputation(10, "contest|first", "won"), "completed"), 0)
    at.entry(record("old-2", a, alice, reputation(-3, comment="spam"), "completed"), 10)
    at.entry(record("old-4", b, bob, points(100, "signup", "shop", "order-1"), "completed"), 0)
    record("old-5", b, bob, points(-500, "too much"), "rejected", error_code="insufficient_balance")
    if seeded.batch_id is not None:
        item = reputation(2, "import|csv", "row 1")
        at.entry(record("batch-1:1", a, alice, item, "completed", batch_id=seeded.batch_id), 7)
        record("batch-1:2", b, bob, points(1), "queued", batch_id=seeded.batch_id)
    else:
        at.entry(record("old-7", a, alice, reputation(2, "import|csv", "row 1"), "completed"), 7)
    record("old-3", a, alice, reputation(5, comment="queued"), "queued")
    record("old-6", b, bob, points(-40, "shop"), "queued")
    return seeded


def tables_and_columns(connection: Connection) -> dict[str, list[str]]:
    rows = connection.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name <> 'alembic_version'"
            " ORDER BY table_name, ordinal_position"
        )
    )
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


def snapshot(connection: Connection, tables: dict[str, list[str]]) -> dict[str, list[Any]]:
    """Every row of these tables, in these columns (those of the older revision), in an
    order that does not depend on where the rows lie (a backfill moves them)."""
    return {
        table: sorted(
            (
                tuple(row)
                for row in connection.execute(text(f"SELECT {', '.join(columns)} FROM {table}"))
            ),
            key=repr,
        )
        for table, columns in tables.items()
    }


@dataclass(frozen=True)
class Before:
    """A seeded database at an older revision: what was seeded, its tables and their rows."""

    seeded: Seeded
    tables: dict[str, list[str]]
    rows: dict[str, list[Any]]


def assert_rows_kept(connection: Connection, before: Before) -> None:
    """The rows seeded are all there, unchanged in the older revision's columns, but those
    of RECOUNTED, which reconcile checks against the tables they are counted from."""
    compared = {t: columns for t, columns in before.tables.items() if t not in RECOUNTED}
    assert snapshot(connection, compared) == {t: before.rows[t] for t in compared}


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def at_revision(engine: Engine, revision: str) -> Before:
    """Migrate the empty database to `revision` and seed it."""
    upgrade(url_of(engine), revision)
    with engine.begin() as connection:
        seeded = seed(connection, revision)
    with engine.connect() as connection:
        tables = tables_and_columns(connection)
        return Before(seeded, tables, snapshot(connection, tables))


def test_the_history_is_one_line_from_0001_to_head() -> None:
    assert HISTORY[0] == "0001" and head_revision() == HEAD
    assert [f"{n:04d}" for n in range(1, len(HISTORY) + 1)] == HISTORY


@pytest.mark.parametrize("revision", HISTORY[:-1])
def test_a_database_at_each_revision_upgrades_to_head_and_keeps_working(
    engine: Engine, revision: str
) -> None:
    before = at_revision(engine, revision)
    seeded = before.seeded
    upgrade(url_of(engine))
    assert current_revision(engine) == HEAD

    with engine.connect() as connection:
        assert_rows_kept(connection, before)
        # Columns added since: their defaults, or (0005) counted from the requests.
        assert connection.execute(
            text("SELECT DISTINCT frozen_amount FROM ledger_entries")
        ).scalars().all() == [0]  # fmt: skip
        if seeded.batch_id is not None:
            counts = connection.execute(
                text("SELECT completed, rejected, completed_at FROM batches WHERE id = :id"),
                {"id": seeded.batch_id},
            ).one()
            assert tuple(counts) == (1, 0, None)

    sessions = make_session_factory(engine)
    with sessions() as session:
        report = reconcile(session)
        assert report.violations == []
        assert (report.accounts, report.requests) == (2, len(seeded.requests))
        principal = authenticate(session, TOKEN)
        assert principal is not None and principal.user_id == seeded.moderator

    # The worker applies what was queued before the upgrade, in order.
    with transaction(sessions) as session:
        applied = apply_pending(session, [seeded.alice_account, seeded.bob_account], 100)
    queued_ids = {seeded.requests[key] for key in seeded.queued}
    assert {o.request_id: o.status for o in applied.outcomes} == dict.fromkeys(
        queued_ids, "completed"
    )
    batch_item = 1 if seeded.batch_id else 0  # bob's queued batch item
    assert balances(engine) == {"alice": 14, "bob": 100 - 40 + batch_item}

    # The accept function records new requests (by username, and by id for a new
    # account), finds an old key again, and the new operations work on old rows.
    with transaction(sessions) as session:
        connection = session.connection()
        old_entry = session.scalars(
            select(LedgerEntry).where(LedgerEntry.request_id == seeded.requests["old-1"])
        ).one()
        new = submit(connection, principal, UserRef("username", username="alice"),
                     reputation(4, comment="after"), REPUTATION, "new-1")  # fmt: skip
        replay = submit(connection, principal, UserRef("user_id", user_id=seeded.alice),
                        reputation(10, "contest|first", "won"), REPUTATION, "old-1")  # fmt: skip
        fresh_account = submit(connection, principal, UserRef("user_id", user_id=seeded.alice),
                               points(25, "bonus"), POINTS, "new-2")  # fmt: skip
        hold = Adjustment(None, "points", 10, entry_type=Operation.HOLD)
        held = submit(connection, principal, UserRef("username", username="bob"), hold, POINTS,
                      "new-3")  # fmt: skip
        undo = reversal_of(old_entry, seeded.alice)
        reversed_ = submit(connection, principal, UserRef("user_id", user_id=seeded.alice),
                           undo, REPUTATION, "new-4")  # fmt: skip
    assert new.created and fresh_account.created and held.created and reversed_.created
    assert not replay.created and replay.request_id == seeded.requests["old-1"]
    with transaction(sessions) as session:
        accounts = [seeded.alice_account, seeded.bob_account, fresh_account.account_id]
        applied = apply_pending(session, accounts, 100)
    assert {o.status for o in applied.outcomes} == {"completed"} and len(applied.outcomes) == 4
    # The hold froze 10 of bob's points without taking them; the reversal took alice's 10.
    assert balances(engine) == {"alice": 14 + 4 - 10, "bob": 100 - 40 + batch_item}
    with sessions() as session:
        assert reconcile(session).violations == []


def balances(engine: Engine) -> dict[str, int]:
    """Each seeded user's balance of the points type of their seeded account."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT u.username, a.balance FROM accounts a JOIN users u ON u.id = a.user_id"
                " WHERE (u.username, a.points_type) IN (('alice', 'reputation'), ('bob', 'points'))"
            )
        )
        return {username: balance for username, balance in rows}


@pytest.mark.parametrize("revision", [HISTORY[-2], HEAD], ids=["one-behind", "at-head"])
def test_tally_db_upgrade_twice_on_a_database_with_rows(engine: Engine, revision: str) -> None:
    """`tally db upgrade` on an existing database: 0 both times, the rows unchanged."""
    before = at_revision(engine, revision)
    runner = CliRunner(env={"TALLY_DATABASE_URL": url_of(engine)})
    for _ in range(2):
        result = runner.invoke(cli, ["db", "upgrade", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"status": "ok"}
        assert current_revision(engine) == HEAD
        with engine.connect() as connection:
            assert_rows_kept(connection, before)
    with make_session_factory(engine)() as session:
        assert reconcile(session).violations == []


CHECK_CONSTRAINTS = text("""
    SELECT conrelid::regclass::text, conname FROM pg_constraint
    WHERE contype = 'c' AND connamespace = 'public'::regnamespace
      AND NOT (SELECT relispartition FROM pg_class WHERE oid = conrelid)
""")


def test_the_models_and_the_migrations_describe_one_schema(engine: Engine) -> None:
    """Model drift: Alembic's autogenerate finds nothing to migrate at head.

    Autogenerate compares tables, columns (types and server defaults), indexes, unique
    and foreign keys; it ignores check constraints, so their names are compared too.
    """
    upgrade(url_of(engine))
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_object": include_object,
            },
        )
        assert compare_metadata(context, Base.metadata) == []
        in_database = {(table, name) for table, name in connection.execute(CHECK_CONSTRAINTS)}
    in_models = {
        (table.name, constraint.name)
        for table in Base.metadata.sorted_tables
        for constraint in table.constraints
        if isinstance(constraint, CheckConstraint)
    }
    assert in_database == in_models
