"""Bearer tokens: created at random, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Role, Token, User

TOKEN_PREFIX = "tly_"
TOKEN_BYTES = 32  # 256 random bits


@dataclass(frozen=True)
class Principal:
    """The caller behind a valid token."""

    user_id: int
    tenant_id: str
    username: str
    avatar: str
    role: Role

    @property
    def can_write(self) -> bool:
        return self.role in (Role.ADMIN, Role.MODERATOR)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, user: User, name: str = "") -> tuple[Token, str]:
    """Store a new token for `user`; return the row and the plain token (shown once)."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token = Token(
        tenant_id=user.tenant_id, user_id=user.id, name=name, token_hash=hash_token(plain)
    )
    session.add(token)
    session.flush()
    return token, plain


def authenticate(session: Session, plain: str) -> Principal | None:
    """The principal of a valid, unrevoked token, or None."""
    row = session.execute(
        select(User)
        .join(Token, Token.user_id == User.id)
        .where(Token.token_hash == hash_token(plain), Token.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        return None
    return Principal(
        user_id=row.id,
        tenant_id=row.tenant_id,
        username=row.username,
        avatar=row.avatar,
        role=Role(row.role),
    )
