"""Accepting an adjustment: resolve its target, record it once per idempotency key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.auth import Principal
from shared.config import PointsType
from shared.fields import BIGINT_MAX
from shared.idempotency import IdempotencyConflict, fingerprint
from shared.models import Account, AdjustmentRequest, EntryType, User, new_ulid
from shared.validation import FieldError, InvalidInput, UserRef


@dataclass(frozen=True)
class Adjustment:
    """A validated adjustment for a known user, ready to be recorded."""

    user_id: int
    points_type: str
    amount: int
    reputation_context: str = ""
    comment: str = ""
    reason: str = ""
    source: str = ""
    related_id: str = ""
    expires_at: datetime | None = None
    allow_negative: bool = False

    def fingerprint(self) -> str:
        """Equal for equal adjustments, whichever route or encoding brought them."""
        return fingerprint([getattr(self, name) for name in FIELD_NAMES])


FIELD_NAMES = tuple(field.name for field in fields(Adjustment))


def find_user(session: Session, tenant_id: str, ref: UserRef) -> User:
    """The user named by `ref` in the tenant, or InvalidInput naming the field."""
    query = select(User).where(User.tenant_id == tenant_id)
    if ref.username is not None:
        query = query.where(User.username == ref.username)
    else:
        query = query.where(User.id == ref.user_id)
    in_range = ref.user_id is None or 0 < ref.user_id <= BIGINT_MAX
    user = session.scalars(query).one_or_none() if in_range else None
    if user is None:
        raise InvalidInput([FieldError(ref.field, "not_found", "no such user")])
    return user


def account_for(session: Session, user: User, points_type: PointsType) -> str:
    """The id of the user's account of this points type, created on first use.

    Looks before inserting: an INSERT that meets the row would wait for a worker
    that holds it locked, while a plain read never waits.
    """
    existing = select(Account.id).where(
        Account.user_id == user.id, Account.points_type == points_type.name
    )
    account_id = session.scalars(existing).one_or_none()
    if account_id is not None:
        return account_id
    session.execute(
        insert(Account)
        .values(
            id=new_ulid(),
            tenant_id=user.tenant_id,
            user_id=user.id,
            points_type=points_type.name,
            allow_negative=points_type.allow_negative,
            exchange_rate=points_type.exchange_rate,
            balance=0,
            frozen_balance=0,
            expired_points=0,
            total_earned=0,
            total_spent=0,
            status="active",
            version=0,
        )
        .on_conflict_do_nothing(index_elements=["user_id", "points_type"])
    )
    return session.scalars(existing).one()


def record(
    session: Session,
    principal: Principal,
    user: User,
    adjustment: Adjustment,
    points_type: PointsType,
    idempotency_key: str | None,
) -> tuple[AdjustmentRequest, bool]:
    """Store the request once per (tenant, key); return it and whether it is new.

    Two concurrent calls with one key meet at the unique constraint: the second
    waits for the first to commit and then finds its row.
    """
    account_id = account_for(session, user, points_type)
    digest = adjustment.fingerprint()
    values = asdict(adjustment) | {
        "tenant_id": principal.tenant_id,
        "idempotency_key": idempotency_key,
        "fingerprint": digest,
        "account_id": account_id,
        "entry_type": EntryType.ADJUST,
        "created_by": principal.user_id,
        "status": "queued",
        "attempts": 0,
    }
    del values["points_type"]
    new_id = session.scalars(
        insert(AdjustmentRequest)
        .values(values)
        .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        .returning(AdjustmentRequest.id)
    ).one_or_none()
    if new_id is not None:
        return session.get_one(AdjustmentRequest, new_id), True
    existing = session.scalars(
        select(AdjustmentRequest).where(
            AdjustmentRequest.tenant_id == principal.tenant_id,
            AdjustmentRequest.idempotency_key == idempotency_key,
        )
    ).one()
    if existing.fingerprint != digest:
        raise IdempotencyConflict(idempotency_key or "")
    return existing, False
