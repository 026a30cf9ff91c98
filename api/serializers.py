"""JSON shapes of the seeds: the Score object and the request status object."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from api import schemas
from api.schemas import dump
from shared.ledger_reads import LeaderboardRow
from shared.models import Account, AdjustmentRequest, LedgerEntry, ReputationType, User


def timestamp(value: datetime | None) -> str | None:
    """UTC, ISO 8601, with a `Z`."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def score_object(entry: LedgerEntry, user: User, creator: User) -> dict[str, Any]:
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
                id=creator.id, username=creator.username, avatar=creator.avatar
            ),
            reputed_at=timestamp(entry.created_at) or "",
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
    return score_object(entry, user, created_by)


def status_object(session: Session, row: AdjustmentRequest) -> dict[str, Any]:
    """The request's status, with its Score object once completed."""
    error = {"code": row.error_code, "message": row.error_message} if row.error_code else None
    return {
        "id": row.id,
        "idempotency_key": row.idempotency_key,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "error": error,
        "created_at": timestamp(row.created_at),
        "started_at": timestamp(row.started_at),
        "completed_at": timestamp(row.completed_at),
        "batch_id": row.batch_id,
        "score": load_score(session, row.ledger_entry_id) if row.ledger_entry_id else None,
    }


def leaderboard_object(row: LeaderboardRow) -> dict[str, Any]:
    """A leaderboard row as the community API names its fields."""
    return dump(
        schemas.LeaderboardEntry(
            user_id=row.user_id,
            user__username=row.username,
            user__real_name=row.real_name,
            total_score=row.total_score,
        )
    )
