"""Provisioning users: one way to create them, from the API and from the CLI."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.intake.validation import FieldError, InvalidInput, UserInput
from shared.models import Account, Role, Tenant, User


def ensure_tenant(session: Session, tenant_id: str) -> None:
    if session.get(Tenant, tenant_id) is None:
        session.add(Tenant(id=tenant_id, name=tenant_id))
        session.flush()


def conflicts(session: Session, tenant_id: str, data: UserInput) -> list[FieldError]:
    """Fields whose value another user of the tenant already has."""
    errors = []
    taken = select(User.id).where(User.tenant_id == tenant_id)
    if session.scalar(taken.where(User.username == data.username)) is not None:
        errors.append(FieldError("username", "taken", "another user has this username"))
    if data.external_id and session.scalar(taken.where(User.external_id == data.external_id)):
        errors.append(FieldError("external_id", "taken", "another user has this external_id"))
    return errors


def create_user(session: Session, tenant_id: str, data: UserInput) -> User:
    """Insert a validated user; InvalidInput if its username or external_id is taken."""
    errors = conflicts(session, tenant_id, data)
    if errors:
        raise InvalidInput(errors)
    user = User(
        tenant_id=tenant_id,
        username=data.username,
        external_id=data.external_id,
        real_name=data.real_name or "",
        email=data.email or "",
        avatar=data.avatar or "",
        description=data.description or "",
        role=data.role or Role.USER,
    )
    session.add(user)
    session.flush()
    return user


def balance_of(session: Session, user_id: int, points_type: str) -> int:
    """The user's balance of one points type (0 before the first adjustment)."""
    balance = session.scalar(
        select(Account.balance).where(
            Account.user_id == user_id, Account.points_type == points_type
        )
    )
    return balance or 0


def list_users(
    session: Session,
    tenant_id: str,
    points_type: str,
    *,
    limit: int,
    offset: int,
    username: str | None = None,
    external_id: str | None = None,
) -> tuple[int, list[tuple[User, int]]]:
    """How many of the tenant's users match, and a page of them in id order, each with
    its balance of `points_type` (0 before the first adjustment)."""
    conditions = [User.tenant_id == tenant_id]
    if username is not None:
        conditions.append(User.username == username)
    if external_id is not None:
        conditions.append(User.external_id == external_id)
    count = session.scalar(select(func.count()).select_from(User).where(*conditions)) or 0
    if offset >= count:
        return count, []
    rows = session.execute(
        select(User, func.coalesce(Account.balance, 0))
        .outerjoin(Account, (Account.user_id == User.id) & (Account.points_type == points_type))
        .where(*conditions)
        .order_by(User.id)
        .limit(limit)
        .offset(offset)
    )
    return count, [(user, balance) for user, balance in rows]
