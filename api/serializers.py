"""JSON shapes of the seeds: the Score object and the request status object."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from api import schemas
from api.schemas import dump
from shared.fields import format_timestamp
from shared.intake.adjustments import Recorded
from shared.models import (
    Account,
    AdjustmentRequest,
    AdjustmentStatus,
    Hold,
    LedgerEntry,
    ReputationType,
    User,
)
from shared.reads.boards import LeaderboardRow, Window
from shared.reads.history import Standing


class ScoreUserFields(Protocol):
    """A User row, or the accept statement's TargetUser."""

    @property
    def id(self) -> int: ...
    @property
    def username(self) -> str: ...
    @property
    def real_name(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def avatar(self) -> str: ...


class StoredEntry(NamedTuple):
    """What a Score object shows of a ledger entry and its creator, as stored."""

    id: int
    amount: int
    balance_after: int
    comment: str
    reputation_context: str
    reputation_type: int
    created_at: datetime
    creator_id: int
    creator_username: str
    creator_avatar: str


def score_object(entry: StoredEntry, user: ScoreUserFields) -> dict[str, Any]:
    """Seed 000's Score object (with seed 001's extra user fields)."""
    return dump(
        schemas.Score(
            id=entry.id,
            user=schemas.ScoreUser(
                id=user.id,
                username=user.username,
                real_name=user.real_name,
                email=user.email,
                description=user.description,
                avatar=user.avatar,
                reputation=entry.balance_after,
            ),
            score=entry.amount,
            reputation_type=entry.reputation_type,
            reputation_type_description=ReputationType(entry.reputation_type).name.lower(),
            comment=entry.comment,
            reputation_context=entry.reputation_context,
            created_by=schemas.ScoreCreator(
                id=entry.creator_id, username=entry.creator_username, avatar=entry.creator_avatar
            ),
            reputed_at=format_timestamp(entry.created_at) or "",
        )
    )


def load_score(session: Session, entry_id: int) -> dict[str, Any]:
    creator = aliased(User)
    entry, user, created_by = session.execute(
        select(LedgerEntry, User, creator)
        .join(Account, Account.id == LedgerEntry.account_id)
        .join(User, User.id == Account.user_id)
        .join(creator, creator.id == LedgerEntry.created_by)
        .where(LedgerEntry.id == entry_id)
    ).one()
    return entry_score(entry, user, created_by)


def entry_score(entry: LedgerEntry, user: User, creator: User) -> dict[str, Any]:
    """The Score object of a stored ledger entry."""
    return score_object(
        StoredEntry(
            entry.id, entry.amount, entry.balance_after, entry.comment, entry.reputation_context,
            entry.reputation_type, entry.created_at, creator.id, creator.username, creator.avatar,
        ),
        user,
    )  # fmt: skip


def status_object(session: Session, row: AdjustmentRequest) -> dict[str, Any]:
    """The request's status, with its Score object once completed."""
    score = load_score(session, row.ledger_entry_id) if row.ledger_entry_id else None
    return _status(row, score)


def queued_status(recorded: Recorded, idempotency_key: str) -> dict[str, Any]:
    """The status of a request just recorded, which no worker has seen yet (no query)."""
    row = AdjustmentRequest(
        id=recorded.request_id,
        idempotency_key=idempotency_key,
        status=AdjustmentStatus.QUEUED,
        attempts=0,
        cut=0,
        created_at=recorded.created_at,
    )
    return _status(row, None)


def _status(row: AdjustmentRequest, score: dict[str, Any] | None) -> dict[str, Any]:
    error = {"code": row.error_code, "message": row.error_message} if row.error_code else None
    return {
        "id": row.id,
        "idempotency_key": row.idempotency_key,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "error": error,
        "created_at": format_timestamp(row.created_at),
        "started_at": format_timestamp(row.started_at),
        "completed_at": format_timestamp(row.completed_at),
        "batch_id": row.batch_id,
        "cut": row.cut,
        "score": score,
    }


def leaderboard_object(row: LeaderboardRow) -> dict[str, Any]:
    """A leaderboard row as the community API names its fields, with its rank."""
    return dump(
        schemas.LeaderboardEntry(
            user_id=row.user_id,
            user__username=row.username,
            user__real_name=row.real_name,
            total_score=row.total_score,
            rank=row.rank,
        )
    )


def period_object(span: Window) -> dict[str, Any]:
    """The period a board sums."""
    return dump(
        schemas.PeriodOut.model_validate(
            {
                "period": str(span.period),
                "starts": span.starts.isoformat() if span.begins is not None else None,
                "from": format_timestamp(span.begins),
                "to": format_timestamp(span.ends),
            }
        )
    )


def public_user_id(user: User) -> str:
    """Seed 002 names users by string: the external id, or the integer id as a string."""
    return user.external_id or str(user.id)


def account_object(account: Account, user: User, then: Standing | None = None) -> dict[str, Any]:
    """Seed 002's PointAccountResponse; with `then`, its figures as they stood at a moment."""
    figures = then or Standing(
        account.balance, account.frozen_balance, account.expired_points,
        account.total_earned, account.total_spent, 0,
    )  # fmt: skip
    return dump(
        schemas.PointAccount(
            id=account.id,
            tenant_id=account.tenant_id,
            user_id=public_user_id(user),
            points_type=account.points_type,
            balance=figures.balance,
            frozen_balance=figures.frozen_balance,
            expired_points=figures.expired_points,
            total_earned=figures.total_earned,
            total_spent=figures.total_spent,
            exchange_rate=account.exchange_rate,
            status=account.status,
            version=account.version,
            created_at=format_timestamp(account.created_at) or "",
            updated_at=format_timestamp(account.updated_at) or "",
        )
    )


def hold_object(session: Session, hold_id: int) -> dict[str, Any]:
    """A hold as stored, or as its request while the worker has not applied it."""
    hold = session.get(Hold, hold_id)
    if hold is not None:
        return dump(
            schemas.HoldOut(
                id=hold.request_id,
                account_id=hold.account_id,
                amount=hold.amount,
                captured=hold.captured,
                status=hold.status,
                expires_at=format_timestamp(hold.expires_at),
                created_at=format_timestamp(hold.created_at) or "",
                closed_at=format_timestamp(hold.closed_at),
            )
        )
    request = session.get_one(AdjustmentRequest, hold_id)
    return dump(
        schemas.HoldOut(
            id=request.id,
            account_id=request.account_id,
            amount=request.amount,
            captured=0,
            status="pending" if request.status != AdjustmentStatus.REJECTED else "rejected",
            expires_at=format_timestamp(request.expires_at),
            created_at=format_timestamp(request.created_at) or "",
            closed_at=None,
        )
    )


def transaction_object(
    user: User, request: AdjustmentRequest, entry: LedgerEntry | None
) -> dict[str, Any]:
    """Seed 002's PointTransactionResponse: the ledger entry, or the request until applied."""
    created = entry.created_at if entry else request.created_at
    return dump(
        schemas.PointTransaction(
            id=entry.ulid if entry else None,
            account_id=request.account_id,
            user_id=public_user_id(user),
            amount=entry.amount if entry else request.amount,
            balance_before=entry.balance_before if entry else None,
            balance_after=entry.balance_after if entry else None,
            type=entry.type if entry else request.entry_type,
            status=request.status,
            reason=request.reason,
            description=request.reason or request.comment,
            source=request.source,
            related_id=entry.related_id if entry else request.related_id,
            idempotency_key=request.idempotency_key,
            expires_at=format_timestamp(request.expires_at),
            created_at=format_timestamp(created) or "",
            updated_at=format_timestamp(request.completed_at or created) or "",
        )
    )
