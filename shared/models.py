"""The database tables of tally, as SQLAlchemy models; Alembic migrations create them."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Sequence,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from ulid import ULID

DEFAULT_TENANT = "default"


def new_ulid(at: datetime | None = None) -> str:
    """A new ULID; made at `at` if given, so that it sorts (and partitions) by that time."""
    return str(ULID.from_datetime(at) if at else ULID())


class Role(enum.StrEnum):
    USER = "user"
    MODERATOR = "moderator"
    ADMIN = "admin"


class AdjustmentStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    REJECTED = "rejected"


FINAL_STATUSES = frozenset({AdjustmentStatus.COMPLETED, AdjustmentStatus.REJECTED})


class AccountStatus(enum.StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"


class EntryType(enum.StrEnum):
    """The `type` of a ledger entry."""

    EARN = "earn"
    SPEND = "spend"
    ADJUST = "adjust"
    REVERSAL = "reversal"
    EXPIRE = "expire"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"


class Operation(enum.StrEnum):
    """What an adjustment request asks for (its `entry_type` column).

    Each is applied into one ledger entry of the same type, except a hold's timeout,
    which is a `release` entry that leaves its hold `timed_out`.
    """

    ADJUST = "adjust"
    REVERSAL = "reversal"
    EXPIRE = "expire"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    TIMEOUT = "timeout"


class HoldStatus(enum.StrEnum):
    OPEN = "open"
    CAPTURED = "captured"
    RELEASED = "released"
    TIMED_OUT = "timed_out"


class ReputationType(enum.IntEnum):
    MANUAL = 10
    REVERSAL = 11


# The requests that name a subject only one live request may name (see the index below).
ONE_PER_SUBJECT = "entry_type IN ('reversal', 'expire', 'timeout') AND status <> 'rejected'"


class Base(DeclarativeBase):
    pass


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # The IANA time zone that draws the tenant's days, weeks, months... (migration 0010).
    time_zone: Mapped[str] = mapped_column(Text, server_default="UTC", default="UTC")
    created_at: Mapped[datetime] = _now()


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("tenant_id", "username"),
        UniqueConstraint("tenant_id", "external_id"),
        CheckConstraint("role IN ('user', 'moderator', 'admin')", name="role_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    username: Mapped[str] = mapped_column(String(150))
    external_id: Mapped[str | None] = mapped_column(String(255))
    real_name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    avatar: Mapped[str] = mapped_column(String(2000), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    role: Mapped[str] = mapped_column(String(16), default=Role.USER)
    created_at: Mapped[datetime] = _now()


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200), default="")
    # sha256 of the token; the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Refused from then on, like a revoked token; None never expires.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Recorded at most once a minute (see shared.intake.auth).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("user_id", "points_type"),
        # The target of requests' composite foreign key (account, user, tenant).
        UniqueConstraint("id", "user_id", "tenant_id", name="accounts_identity"),
        CheckConstraint("status IN ('active', 'frozen')", name="status_known"),
        # Held points are part of the balance: spendable = balance - frozen_balance.
        CheckConstraint(
            "frozen_balance >= 0 AND (frozen_balance = 0 OR allow_negative"
            " OR frozen_balance <= balance)",
            name="frozen_within_balance",
        ),
        CheckConstraint("expired_points >= 0", name="expired_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_ulid)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    points_type: Mapped[str] = mapped_column(String(64))
    allow_negative: Mapped[bool] = mapped_column(Boolean)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    frozen_balance: Mapped[int] = mapped_column(BigInteger, default=0)
    expired_points: Mapped[int] = mapped_column(BigInteger, default=0)
    total_earned: Mapped[int] = mapped_column(BigInteger, default=0)
    total_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    exchange_rate: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default=AccountStatus.ACTIVE)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class AdjustmentRequest(Base):
    """An accepted adjustment: the outbox row the worker applies exactly once."""

    __tablename__ = "adjustment_requests"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        CheckConstraint(
            "status IN ('queued', 'processing', 'completed', 'rejected')", name="status_known"
        ),
        CheckConstraint(
            "entry_type IN ('adjust', 'reversal', 'expire', 'hold', 'capture', 'release',"
            " 'timeout')",
            name="entry_type_known",
        ),
        # An adjustment or reversal moves points; a hold names how many, a capture how
        # many (0: the whole hold); a release, a timeout and an expiry are worked out
        # by the worker from their hold or lot.
        CheckConstraint(
            "CASE WHEN entry_type IN ('adjust', 'reversal') THEN amount <> 0"
            " WHEN entry_type = 'hold' THEN amount > 0"
            " WHEN entry_type = 'capture' THEN amount >= 0"
            " ELSE amount = 0 END",
            name="amount_fits_type",
        ),
        # One check per row (cheap for a 100,000-row COPY) covers the account, its user
        # and its tenant, and keeps the three consistent.
        ForeignKeyConstraint(
            ["account_id", "user_id", "tenant_id"],
            ["accounts.id", "accounts.user_id", "accounts.tenant_id"],
            name="adjustment_requests_account_fkey",
        ),
        # The worker's and the relay's scan: pending requests of one account, in order.
        Index(
            "ix_adjustment_requests_pending",
            "account_id",
            "id",
            postgresql_where="status IN ('queued', 'processing')",
        ),
        # The interactive lane's scan (shared/flow/outbox.py): pending single adjustments,
        # oldest first, with their accounts.
        Index(
            "ix_adjustment_requests_single_pending",
            "id",
            postgresql_include=["account_id"],
            postgresql_where="status IN ('queued', 'processing') AND batch_id IS NULL",
        ),
        Index("ix_adjustment_requests_batch", "batch_id", "status"),
        # Retention's scan: the final adjustments, oldest first (shared/intake/idempotency.py).
        Index(
            "ix_adjustment_requests_final",
            "id",
            postgresql_where="entry_type = 'adjust' AND status IN ('completed', 'rejected')",
        ),
        CheckConstraint("cut >= 0 AND (cut = 0 OR cut < amount)", name="cut_within_amount"),
        # One live request per subject: an entry is reversed, a lot expired and a hold
        # timed out at most once (a rejected request, say a reversal refused for want of
        # balance, may be asked again). A second reversal is refused when accepted; the
        # expiry and timeout tasks skip what is already asked.
        Index(
            "ix_adjustment_requests_one_per_subject",
            "entry_type",
            "related_id",
            unique=True,
            postgresql_where=ONE_PER_SUBJECT,
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(String(26))
    user_id: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    # The Operation asked for.
    entry_type: Mapped[str] = mapped_column(String(16), default=Operation.ADJUST)
    reputation_context: Mapped[str] = mapped_column(String(255), default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(255), default="")
    related_id: Mapped[str] = mapped_column(String(255), default="")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    allow_negative: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    batch_id: Mapped[str | None] = mapped_column(String(26))
    status: Mapped[str] = mapped_column(String(16), default=AdjustmentStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ledger_entry_id: Mapped[int | None] = mapped_column(BigInteger)
    # What a cap took off `amount`: the entry moved `amount - cut` (docs/periods.md).
    cut: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)


class LedgerEntry(Base):
    """One applied adjustment; rows are never updated or deleted (a trigger refuses it).

    Partitioned by month on its ULID, which begins with the entry's `created_at`
    (migration 0011, docs/storage.md). PostgreSQL enforces uniqueness across
    partitions only for the ULID, so the id, the request and the one reversal, expiry or
    closing per subject are unique within each partition, by the indexes that
    `ledger_entries_partition()` makes on each.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("balance_after = balance_before + amount", name="balance_arithmetic"),
        # Invariant 6: only an entry applied under a negative-allowing rule may end below zero.
        CheckConstraint("negative_allowed OR balance_after >= 0", name="balance_not_negative"),
        CheckConstraint(
            "expired >= 0 AND (type <> 'expire' OR expired = -amount)",
            name="expired_within_amount",
        ),
        CheckConstraint(
            "type IN ('earn', 'spend', 'adjust', 'reversal', 'expire', 'hold', 'capture',"
            " 'release')",
            name="type_known",
        ),
        Index("ix_ledger_entries_account_id", "account_id", "id"),
        {"postgresql_partition_by": "RANGE (ulid)"},
    )
    # The table has no primary key (a partitioned table's must hold the ULID, and the
    # first partition's is its id); the ORM knows an entry by its id, which the sequence
    # makes unique.
    __mapper_args__ = {"primary_key": ["id"]}  # noqa: RUF012 (read once, by the mapper)

    # From a sequence of its own: a partitioned table has no identity column before
    # PostgreSQL 17.
    id: Mapped[int] = mapped_column(BigInteger, Sequence("ledger_entries_id_seq"))
    ulid: Mapped[str] = mapped_column(String(26), unique=True, default=new_ulid)
    # Account, tenant and creator are copied from the request, whose foreign keys hold
    # them (migration 0006); `tally reconcile` checks that each entry agrees with it.
    tenant_id: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(String(26))
    # The account's points type, kept on the entry so that reads need not join accounts.
    points_type: Mapped[str] = mapped_column(String(64))
    # At most one entry per request, however often its task runs. Not a foreign key: the
    # request of an adjustment is deleted after the idempotency window.
    request_id: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    # What the entry moved into (+) or out of (-) the account's frozen_balance.
    frozen_amount: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    # How many of its points expired (part of `amount`): all an expiry takes, or the points
    # a release, capture or reversal gave back to a lot that had expired.
    expired: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    balance_before: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    negative_allowed: Mapped[bool] = mapped_column(Boolean)
    type: Mapped[str] = mapped_column(String(16))
    reputation_type: Mapped[int] = mapped_column(Integer)
    reputation_context: Mapped[str] = mapped_column(String(255))
    comment: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(255))
    related_id: Mapped[str] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _now()


# The read routes' indexes (migration 0002); declared here so metadata and migrations agree.
# One user's entries, newest first: the score list filtered by user.
Index(
    "ix_ledger_entries_account_created",
    LedgerEntry.account_id,
    LedgerEntry.created_at.desc(),
    LedgerEntry.id.desc(),
)
# A tenant's entries, newest first: the score list's default order and date bounds, and the
# leaderboard's window; the included columns let the leaderboard sum without the table.
Index(
    "ix_ledger_entries_tenant_created",
    LedgerEntry.tenant_id,
    LedgerEntry.created_at.desc(),
    LedgerEntry.id.desc(),
    postgresql_include=["account_id", "amount", "reputation_type", "type"],
)
# Prefix matches on the context (`LIKE 'contest|first_place|%'`) under any collation.
Index(
    "ix_ledger_entries_tenant_context",
    LedgerEntry.tenant_id,
    LedgerEntry.points_type,
    LedgerEntry.reputation_context,
    postgresql_ops={"reputation_context": "text_pattern_ops"},
)


class Period(enum.StrEnum):
    """The periods an entry is counted in (in its tenant's time zone); `all` is all time."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"
    ALL = "all"


class PeriodTotal(Base):
    """An account's entries in one period, summed: what period leaderboards and caps read.

    The applier adds to it in the statement that writes the entries (migration 0010).
    """

    __tablename__ = "period_totals"
    __table_args__ = (
        CheckConstraint(
            "period IN ('day', 'week', 'month', 'quarter', 'year', 'all')", name="period_known"
        ),
        CheckConstraint(
            "reversal_entries >= 0 AND reversal_entries <= entries", name="counts_within"
        ),
        Index(
            "ix_period_totals_board",
            "tenant_id",
            "points_type",
            "period",
            "starts",
            text("total DESC"),
            "user_id",
        ),
        Index(
            "ix_period_totals_manual",
            "tenant_id",
            "points_type",
            "period",
            "starts",
            text("(total - reversal_total) DESC"),
            "user_id",
            postgresql_where="entries > reversal_entries",
        ),
        Index(
            "ix_period_totals_reversals",
            "tenant_id",
            "points_type",
            "period",
            "starts",
            text("reversal_total DESC"),
            "user_id",
            postgresql_where="reversal_entries > 0",
        ),
    )

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    # The first day of the period, in the tenant's time zone (1970-01-01 for `all`).
    starts: Mapped[date] = mapped_column(Date, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    points_type: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    entries: Mapped[int] = mapped_column(BigInteger)
    reversal_total: Mapped[int] = mapped_column(BigInteger)
    reversal_entries: Mapped[int] = mapped_column(BigInteger)
    # What counted towards the points type's cap (positive adjustments not exempt).
    capped: Mapped[int] = mapped_column(BigInteger)
    # The account's other figures over the period (migration 0013): what as-of reads.
    frozen_total: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    expired_total: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    earned_total: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    spent_total: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)


class PeriodScore(Base):
    """How many accounts stand at one score on one period's boards: what a board's size
    and a rank are summed from. Of one kind: `plain` (totals without reversals, on the
    `all` and `manual` boards alike), or `all`, `manual`, `reversals` (totals with
    reversals, on that board; migration 0014).

    The applier moves each account it writes from its old score to its new one in the
    statement that updates its period totals; `period_score_kinds()` says where a
    period total stands (migration 0012). A score's count is split in shards by
    account (`period_score_shard()`) so that concurrent appliers seldom share a row.
    """

    __tablename__ = "period_scores"
    __table_args__ = (
        CheckConstraint("kind IN ('plain', 'all', 'manual', 'reversals')", name="kind_known"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    points_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    starts: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    score: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    users: Mapped[int] = mapped_column(BigInteger)


class Lot(Base):
    """Points earned with an expiry: spends and holds take them oldest-expiring first, and
    what is left when they expire is taken by one `expire` entry (docs/points.md)."""

    __tablename__ = "lots"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        # Below zero only once its earn is reversed while some of its points are spent or
        # held (an overdraft, repaid by the points given back to it).
        CheckConstraint(
            "remaining <= amount AND remaining >= -amount", name="remaining_within_amount"
        ),
        CheckConstraint(
            "(expired_at IS NULL) = (expired_amount IS NULL) AND (expired_at IS NULL"
            " OR (remaining <= 0 AND expired_amount >= 0 AND expired_amount <= amount))",
            name="expired_once",
        ),
        # The applier's lots of an account (to take from, and overdrafts to repay).
        Index(
            "ix_lots_live",
            "account_id",
            "expires_at",
            "entry_ulid",
            postgresql_where="remaining <> 0",
        ),
        # The expiry timer's scan: each lot is asked to expire once, when its time comes.
        Index("ix_lots_due", "expires_at", postgresql_where="expired_at IS NULL"),
    )

    # The earning entry's ULID (the points API's transaction id): `related_id` of its expiry.
    entry_ulid: Mapped[str] = mapped_column(ForeignKey("ledger_entries.ulid"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    # The lot's points still in the account and not held: the sum of its moves.
    remaining: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set by its expiry (0 when nothing was left), then raised by the points given back to
    # it afterwards, which expire at once: the sum of its moves' `expired`.
    expired_amount: Mapped[int | None] = mapped_column(BigInteger)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the "points will expire" event was written for it (once per lot).
    warned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LotMove(Base):
    """How many points of one lot one ledger entry moved; rows are never changed.

    `delta` is the change of the lot's `remaining` (+: earned into it or given back to
    it, -: taken by a spend, a hold or a reversal); `expired` counts points given back
    to it after it expired, or taken by its expiry, that expired there.
    """

    __tablename__ = "lot_moves"
    __table_args__ = (
        CheckConstraint("expired >= 0 AND (delta <> 0 OR expired <> 0)", name="moves_points"),
        Index("ix_lot_moves_lot", "lot_ulid"),
    )

    entry_ulid: Mapped[str] = mapped_column(ForeignKey("ledger_entries.ulid"), primary_key=True)
    lot_ulid: Mapped[str] = mapped_column(ForeignKey("lots.entry_ulid"), primary_key=True)
    delta: Mapped[int] = mapped_column(BigInteger)
    expired: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)


class Hold(Base):
    """Points moved from spendable to frozen_balance until captured, released or timed out."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(
            "status IN ('open', 'captured', 'released', 'timed_out')", name="status_known"
        ),
        CheckConstraint(
            "(status = 'captured') = (captured > 0) AND captured <= amount",
            name="captured_within_amount",
        ),
        CheckConstraint("(status = 'open') = (closed_by IS NULL)", name="closed_once"),
        Index("ix_holds_due", "expires_at", postgresql_where="status = 'open'"),
    )

    # The hold's id is its request's id: known when the hold is accepted, so a capture
    # can be accepted before the hold is applied (the worker applies them in order).
    request_id: Mapped[int] = mapped_column(ForeignKey("adjustment_requests.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    captured: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default=HoldStatus.OPEN)
    # Released automatically at this time if still open; None holds until told.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The capture, release or timeout request that closed it.
    closed_by: Mapped[int | None] = mapped_column(ForeignKey("adjustment_requests.id"), unique=True)
    created_at: Mapped[datetime] = _now()
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Batch(Base):
    """A bulk submission: its items are adjustment requests that carry its id."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        CheckConstraint(
            "completed >= 0 AND rejected >= 0 AND completed + rejected <= total",
            name="final_within_total",
        ),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_ulid)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(Integer)
    # Items final so far, counted by the applier in the transaction that applies them.
    completed: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    rejected: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    # Items found accepted already under their own idempotency key: not created again, and
    # not part of `total`.
    replayed: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    # When the last item became final.
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = _now()


class Deployment(Base):
    """One row: the id that scopes this deployment's Redis keys and channels, so that two
    deployments sharing a Redis server never see each other's work (made by migration 0008)."""

    __tablename__ = "deployment"
    __table_args__ = (CheckConstraint("singleton", name="one_row"),)

    singleton: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=true())
    id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = _now()


class Event(Base):
    """One change of state, written by the triggers of migration 0009 in the transaction
    that made it (docs/events.md); numbered by the sequencer once committed."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint(
            "(id IS NULL) = (account_seq IS NULL) OR (account_id IS NULL AND account_seq IS NULL)",
            name="numbered_together",
        ),
        Index("ix_events_id", "id", unique=True, postgresql_where="id IS NOT NULL"),
        Index("ix_events_unnumbered", "seq", postgresql_where="id IS NULL"),
        Index("ix_events_tenant", "tenant_id", "id", postgresql_where="id IS NOT NULL"),
        Index(
            "ix_events_account",
            "account_id",
            "account_seq",
            unique=True,
            postgresql_where="account_seq IS NOT NULL",
        ),
        Index("ix_events_time", "occurred_at"),
    )

    # The write order, for the sequencer only.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    # The global position: grows in the order events become visible to readers.
    id: Mapped[int | None] = mapped_column(BigInteger)
    # The account's own sequence (1, 2, ...), none for tenant-wide events.
    account_seq: Mapped[int | None] = mapped_column(BigInteger)
    tenant_id: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str | None] = mapped_column(String(26))
    type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = _now()
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)


class EventCursor(Base):
    """How far a consumer inside tally (the webhook fan-out, the NATS stream) has read."""

    __tablename__ = "event_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    updated_at: Mapped[datetime] = _now()


class EndpointStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEndpoint(Base):
    """A tenant's webhook receiver: the events it wants and the secret that signs them."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'disabled')", name="endpoint_status"),
        Index("ix_webhook_endpoints_tenant", "tenant_id"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_ulid)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    url: Mapped[str] = mapped_column(Text)
    # The event types it wants; empty: all of them.
    types: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}", default=list)
    secret: Mapped[str] = mapped_column(Text)
    # After a rotation the old secret signs too, until `previous_secret_until`.
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), server_default="active", default="active")
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, server_default="", default="")
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # Since when every attempt failed (no 2xx); cleared by a 2xx (migration 0009).
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class WebhookDelivery(Base):
    """One event for one endpoint: pending until the receiver answers 2xx, retried with
    backoff, failed after the retry window (and redeliverable). Also the delivery log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="delivery_status"),
        Index(
            "ix_webhook_deliveries_pending",
            "endpoint_id",
            "event_id",
            postgresql_where="status = 'pending'",
        ),
        # Each account's queue, latest wait last (migration 0016).
        Index(
            "ix_webhook_deliveries_queue_until",
            "endpoint_id",
            text("(COALESCE(account_id, ''))"),
            "next_attempt_at",
            postgresql_where="status = 'pending'",
        ),
    )

    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"), primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str | None] = mapped_column(String(26))
    status: Mapped[str] = mapped_column(String(16), server_default="pending", default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    next_attempt_at: Mapped[datetime] = _now()
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The retry window runs from here; a redelivery clears it (migration 0009).
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_latency_ms: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
