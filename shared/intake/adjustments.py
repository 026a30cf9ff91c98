"""Accepting an adjustment: resolve its target, record it once per idempotency key."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Connection, text

from shared.fields import BIGINT_MAX
from shared.intake.auth import Principal
from shared.intake.idempotency import IdempotencyConflict, fingerprint
from shared.intake.validation import FieldError, InvalidInput, UserRef
from shared.models import EntryType, LedgerEntry, Operation, new_ulid
from shared.platform.config import PointsType


@dataclass(frozen=True)
class Adjustment:
    """A validated adjustment for a known user, ready to be recorded."""

    # None when the accept statement is to find the user the client's UserRef names.
    user_id: int | None
    points_type: str
    amount: int
    reputation_context: str = ""
    comment: str = ""
    reason: str = ""
    source: str = ""
    related_id: str = ""
    expires_at: datetime | None = None
    allow_negative: bool = False
    # What the request asks for: an adjustment, or a reversal, hold, capture or release
    # (whose amount and related_id the route sets; see shared.models.Operation).
    entry_type: Operation = Operation.ADJUST

    def fingerprint(self) -> str:
        """Equal for equal adjustments, whichever route or encoding brought them.

        The user is not part of it: the accept statement resolves the user inside the
        database, so a reused key is checked by this digest and the stored user_id.
        The operation is, when it is not a plain adjustment (so that the digests of
        requests stored before there were other operations stay the same).
        """
        values = [getattr(self, name) for name in FIELD_NAMES]
        if self.entry_type != Operation.ADJUST:
            values.append(self.entry_type)
        return fingerprint(values)


COLUMNS = tuple(field.name for field in fields(Adjustment))
FIELD_NAMES = tuple(name for name in COLUMNS if name not in ("user_id", "entry_type"))


class SubjectTaken(Exception):
    """A live request already names this subject: the entry is reversed already."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"{subject} has a reversal already")
        self.subject = subject


class NotReversible(Exception):
    """The entry cannot be reversed: only points moved by an adjustment or a capture can."""


# Entries a reversal may undo: an expiry, a hold, a release and a reversal itself cannot.
REVERSIBLE = frozenset({EntryType.EARN, EntryType.SPEND, EntryType.ADJUST, EntryType.CAPTURE})
# The unique index that keeps one live request per reversed entry (shared.models).
ONE_PER_SUBJECT_INDEX = "ix_adjustment_requests_one_per_subject"


def reversal_of(
    entry: LedgerEntry, user_id: int, *, reason: str = "", comment: str = "", force: bool = False
) -> Adjustment:
    """The request that undoes `entry`: the opposite of the points it moved (before any of
    them expired), in its account and context. The worker decides how many it moves: a
    reversed earn takes back no more than what of it has not expired (docs/points.md).

    Raises NotReversible for an entry of a kind that moved no points of its own.
    """
    if entry.type not in REVERSIBLE or entry.amount == 0:
        raise NotReversible(f"a {entry.type} entry cannot be reversed")
    return Adjustment(
        user_id=user_id,
        points_type=entry.points_type,
        amount=-(entry.amount + entry.expired),
        reputation_context=entry.reputation_context,
        comment=comment,
        reason=reason,
        related_id=entry.ulid,
        allow_negative=force,
        entry_type=Operation.REVERSAL,
    )


@dataclass(frozen=True)
class TargetUser:
    """The fields of the adjustment's user that the answers show."""

    id: int
    username: str
    real_name: str
    email: str
    description: str
    avatar: str


@dataclass(frozen=True)
class Recorded:
    """An accepted request: new (`created`) or found again by its idempotency key."""

    request_id: int
    account_id: str
    created: bool
    created_at: datetime
    user: TargetUser


# The accept path in one round trip: find the user and its account, insert the request
# unless its key is taken, write its `request.accepted` event (docs/events.md), and
# return what the answer needs. Zero rows: no such user; no account_id: the account does
# not exist yet; no request_id: the key is taken.
_SUBMIT = """
    WITH target AS (
        SELECT id, username, real_name, email, description, avatar, external_id FROM users
        WHERE tenant_id = %(tenant)s AND {column} = %(target)s
    ), account AS (
        SELECT accounts.id, accounts.user_id FROM accounts
        JOIN target ON accounts.user_id = target.id WHERE accounts.points_type = %(points_type)s
    ), inserted AS (
        INSERT INTO adjustment_requests (
            tenant_id, idempotency_key, fingerprint, account_id, user_id, amount, entry_type,
            reputation_context, comment, reason, source, related_id, expires_at, allow_negative,
            created_by, status, attempts)
        SELECT %(tenant)s, %(key)s, %(fingerprint)s, account.id, account.user_id, %(amount)s,
            %(entry_type)s, %(reputation_context)s, %(comment)s, %(reason)s, %(source)s,
            %(related_id)s, %(expires_at)s, %(allow_negative)s, %(created_by)s, 'queued', 0
        FROM account
        ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
        RETURNING id, account_id, created_at
    ), logged AS (
        INSERT INTO events (tenant_id, account_id, type, payload)
        SELECT %(tenant)s, inserted.account_id, 'request.accepted', jsonb_build_object(
            'request_id', inserted.id, 'idempotency_key', CAST(%(key)s AS text),
            'operation', CAST(%(entry_type)s AS text), 'amount', CAST(%(amount)s AS bigint),
            'user_id', COALESCE(target.external_id, target.id::text),
            'points_type', CAST(%(points_type)s AS text),
            'related_id', NULLIF(CAST(%(related_id)s AS text), ''))
        FROM inserted CROSS JOIN target
    )
    SELECT target.*, account.id AS account_id, inserted.id AS request_id, inserted.created_at
    FROM target LEFT JOIN account ON true LEFT JOIN inserted ON true
"""
SUBMIT_BY_ID = _SUBMIT.format(column="id")
SUBMIT_BY_USERNAME = _SUBMIT.format(column="username")

CREATE_ACCOUNT = text("""
    INSERT INTO accounts (id, tenant_id, user_id, points_type, allow_negative, exchange_rate,
                          balance, frozen_balance, expired_points, total_earned, total_spent,
                          status, version)
    VALUES (:id, :tenant, :user_id, :points_type, :allow_negative, :exchange_rate,
            0, 0, 0, 0, 0, 'active', 0)
    ON CONFLICT (user_id, points_type) DO NOTHING
""")

FIND_BY_KEY = text("""
    SELECT id, account_id, user_id, fingerprint, created_at FROM adjustment_requests
    WHERE tenant_id = :tenant AND idempotency_key = :key
""")


def submit(
    connection: Connection,
    principal: Principal,
    target: UserRef,
    adjustment: Adjustment,
    points_type: PointsType,
    idempotency_key: str | None,
) -> Recorded:
    """Record the request once per (tenant, key): one statement on the common path.

    The caller owns the transaction (the API passes an autocommit connection, so the
    statement is its own transaction). Raises InvalidInput naming the target's field
    for an unknown user, and IdempotencyConflict for a key used with another body.
    Two concurrent calls with one key meet at the unique constraint: the second waits
    for the first to commit and then finds its row. Raises SubjectTaken for a second
    reversal of one entry (a replay with the same key finds the first instead).
    """
    in_range = target.user_id is None or 0 < target.user_id <= BIGINT_MAX
    if not in_range:
        raise InvalidInput([FieldError(target.field, "not_found", "no such user")])
    statement = SUBMIT_BY_USERNAME if target.username is not None else SUBMIT_BY_ID
    digest = adjustment.fingerprint()
    values = {name: getattr(adjustment, name) for name in COLUMNS} | {
        "tenant": principal.tenant_id,
        "target": target.username if target.username is not None else target.user_id,
        "key": idempotency_key,
        "fingerprint": digest,
        "created_by": principal.user_id,
    }
    for _ in range(2):
        row = _execute(connection, statement, values)
        if row is None:
            raise InvalidInput([FieldError(target.field, "not_found", "no such user")])
        user = TargetUser(row.id, row.username, row.real_name, row.email, row.description,
                          row.avatar)  # fmt: skip
        if row.account_id is None:
            create_account(connection, principal.tenant_id, user.id, points_type)
            continue
        if row.request_id is not None:
            return Recorded(row.request_id, row.account_id, True, row.created_at, user)
        existing = connection.execute(
            FIND_BY_KEY, {"tenant": principal.tenant_id, "key": idempotency_key}
        ).one()
        if existing.fingerprint != digest or existing.user_id != user.id:
            raise IdempotencyConflict(idempotency_key or "")
        return Recorded(existing.id, existing.account_id, False, existing.created_at, user)
    raise AssertionError("the account was created and must be found")  # pragma: no cover


def _execute(connection: Connection, statement: str, values: dict[str, Any]) -> Any:
    # Driver-level SQL: no compiling, and psycopg prepares it after a few runs; through
    # SQLAlchemy still, whose error handling turns a dead connection into a 503 and
    # discards it (the bare driver saved 0.05 ms and answered 500 to a PostgreSQL restart).
    try:
        return connection.exec_driver_sql(statement, values).one_or_none()
    except sqlalchemy.exc.IntegrityError as error:
        diagnostics = getattr(error.orig, "diag", None)
        if getattr(diagnostics, "constraint_name", None) == ONE_PER_SUBJECT_INDEX:
            raise SubjectTaken(values["related_id"]) from None
        raise


def create_account(
    connection: Connection, tenant_id: str, user_id: int, points_type: PointsType
) -> None:
    """The user's first account of this points type (a concurrent creator may win)."""
    connection.execute(
        CREATE_ACCOUNT,
        {
            "id": new_ulid(), "tenant": tenant_id, "user_id": user_id,
            "points_type": points_type.name, "allow_negative": points_type.allow_negative,
            "exchange_rate": points_type.exchange_rate,
        },
    )  # fmt: skip
