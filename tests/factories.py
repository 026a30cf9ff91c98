"""Small factories that build rows for a test: tenants, users, tokens."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.flow.dispatch import ACCOUNTS_PER_TASK
from shared.flow.outbox import pending_single_accounts
from shared.intake.adjustments import Adjustment, submit
from shared.intake.auth import Principal, create_token
from shared.intake.validation import UserRef
from shared.models import (
    Account,
    AdjustmentRequest,
    LedgerEntry,
    Role,
    Tenant,
    User,
)
from shared.platform.config import DEFAULT_POINTS_TYPES, PointsType
from shared.platform.db import transaction
from worker.app import TallyCelery


@dataclass(frozen=True)
class Caller:
    """A user with a token, as a test client sees it."""

    user_id: int
    username: str
    tenant_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Factory:
    """Builds rows in a fresh tenant, so tests never see each other's data."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.tenant_id = "t_" + secrets.token_hex(6)
        with transaction(sessions) as session:
            session.add(Tenant(id=self.tenant_id, name=self.tenant_id))

    def user(self, username: str | None = None, role: Role = Role.USER, **fields: str) -> User:
        with transaction(self.sessions) as session:
            user = User(
                tenant_id=self.tenant_id,
                username=username or "user_" + secrets.token_hex(4),
                role=role,
                real_name=fields.pop("real_name", "Test User"),
                email=fields.pop("email", ""),
                avatar=fields.pop("avatar", "https://example.com/avatar.jpg"),
                description=fields.pop("description", ""),
                **fields,
            )
            session.add(user)
        return user

    def caller(self, role: Role = Role.MODERATOR) -> Caller:
        user = self.user(role=role)
        with transaction(self.sessions) as session:
            _, token = create_token(session, session.get_one(User, user.id), "test")
        return Caller(user.id, user.username, self.tenant_id, token)


def ledger_of(session: Session, user_id: int, points_type: str | None = None) -> list[LedgerEntry]:
    """The user's ledger entries (of every points type, or of one), in order."""
    query = (
        select(LedgerEntry)
        .join(Account, Account.id == LedgerEntry.account_id)
        .where(Account.user_id == user_id)
        .order_by(LedgerEntry.id)
    )
    if points_type is not None:
        query = query.where(LedgerEntry.points_type == points_type)
    return list(session.scalars(query))


def count_rows(session: Session, tenant_id: str) -> tuple[int, int]:
    """How many (requests, ledger entries) the tenant has."""
    requests = session.scalar(select(func.count()).where(AdjustmentRequest.tenant_id == tenant_id))
    entries = session.scalar(select(func.count()).where(LedgerEntry.tenant_id == tenant_id))
    return requests or 0, entries or 0


def assert_ledger_consistent(session: Session, account_id: str) -> None:
    """Invariant 1: balance = sum of amounts; the before/after chain has no gap."""
    account = session.get_one(Account, account_id)
    entries = list(
        session.scalars(
            select(LedgerEntry).where(LedgerEntry.account_id == account_id).order_by(LedgerEntry.id)
        )
    )
    running = 0
    for entry in entries:
        assert entry.balance_before == running, f"chain broken at entry {entry.id}"
        assert entry.balance_after == running + entry.amount
        running = entry.balance_after
    assert account.balance == running == sum(e.amount for e in entries)
    # Each entry's gross (what it moved before any of it expired) is earned or spent.
    grosses = [e.amount + e.expired for e in entries]
    assert account.total_earned == sum(g for g in grosses if g > 0)
    assert account.total_spent == -sum(g for g in grosses if g < 0)
    assert account.expired_points == sum(e.expired for e in entries)


def apply_now(app: TallyCelery, account_ids: list[str]) -> int:
    """Apply these accounts' pending requests in this thread, as a drain task does."""
    return len(app.apply(account_ids).outcomes)


def apply_leftovers(app: TallyCelery) -> None:
    """Apply the single adjustments earlier tests left pending in this database.

    The interactive lane's drain applies every pending single adjustment it finds, so a
    test that counts a drain's transactions or tasks first settles what is not its own.
    """
    for _ in range(100):
        accounts = pending_single_accounts(app.resources.engine, ACCOUNTS_PER_TASK)
        if not accounts:
            return
        app.apply(accounts)
    raise AssertionError("requests left pending by earlier tests are not applied")


def queue_requests(
    sessions: sessionmaker[Session], caller: Caller, user_id: int, amounts: list[int]
) -> tuple[str, list[int]]:
    """Record pending requests (as the API would, without publishing); return account, ids."""
    settings_type = PointsType("reputation", allow_negative=True, exchange_rate=1)
    principal = Principal(caller.user_id, caller.tenant_id, caller.username, "", Role.MODERATOR)
    ids = []
    with transaction(sessions) as session:
        for amount in amounts:
            adjustment = Adjustment(
                user_id=user_id, points_type="reputation", amount=amount, comment="queued"
            )
            recorded = submit(
                session.connection(), principal, UserRef("user_id", user_id=user_id), adjustment,
                settings_type, None,
            )  # fmt: skip
            ids.append(recorded.request_id)
            account_id = recorded.account_id
    return account_id, ids


def queue_adjustments(
    sessions: sessionmaker[Session],
    caller: Caller,
    adjustments: Iterable[Adjustment],
) -> list[str]:
    """Record pending requests for any users and points types; return their accounts in order."""
    principal = Principal(caller.user_id, caller.tenant_id, caller.username, "", Role.MODERATOR)
    accounts: list[str] = []
    with transaction(sessions) as session:
        for adjustment in adjustments:
            points_type = DEFAULT_POINTS_TYPES[adjustment.points_type]
            target = UserRef("user_id", user_id=adjustment.user_id)
            connection = session.connection()
            recorded = submit(connection, principal, target, adjustment, points_type, None)
            if recorded.account_id not in accounts:
                accounts.append(recorded.account_id)
    return accounts


def reputation(user_id: int, amount: int, context: str = "", comment: str = "") -> Adjustment:
    """A community adjustment of the default points type."""
    return Adjustment(
        user_id=user_id,
        points_type="reputation",
        amount=amount,
        reputation_context=context,
        comment=comment,
    )
