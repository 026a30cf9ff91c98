"""Bearer tokens: created at random, shown once, stored only as a SHA-256 hash.

A token may expire; an expired or revoked token is refused. `TokenCache` keeps each
valid token's principal for a second, so that the API does not query the database on
every request while a revocation still takes effect within that second; it records a
token's last use at most once a minute, so that reads do not become writes.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, Select, func, or_, select, text, update
from sqlalchemy.orm import Session

from shared.models import Role, Token, User

TOKEN_PREFIX = "tly_"
TOKEN_BYTES = 32  # 256 random bits
LAST_USE_PRECISION = timedelta(minutes=1)


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


def create_token(
    session: Session, user: User, name: str = "", expires_at: datetime | None = None
) -> tuple[Token, str]:
    """Store a new token for `user`; return the row and the plain token (shown once)."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token = Token(
        tenant_id=user.tenant_id,
        user_id=user.id,
        name=name,
        token_hash=hash_token(plain),
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return token, plain


def _valid_token(token_hash: str) -> Select[User, int, datetime | None]:
    return (
        select(User, Token.id, Token.last_used_at)
        .join(Token, Token.user_id == User.id)
        .where(
            Token.token_hash == token_hash,
            Token.revoked_at.is_(None),
            or_(Token.expires_at.is_(None), Token.expires_at > func.now()),
        )
    )


def authenticate(session: Session, plain: str) -> Principal | None:
    """The principal of a valid (unrevoked, unexpired) token, or None."""
    found = session.execute(_valid_token(hash_token(plain))).one_or_none()
    return None if found is None else _principal(found[0])


def _principal(user: User) -> Principal:
    return Principal(
        user_id=user.id,
        tenant_id=user.tenant_id,
        username=user.username,
        avatar=user.avatar,
        role=Role(user.role),
    )


def record_use(session: Session, token_id: int) -> None:
    """Set the token's last use to now, unless it was set less than a minute ago.

    Bookkeeping, not money: its commit does not wait for a synchronous standby, so a
    read keeps working while there is none (every write is refused then)."""
    session.execute(text("SET LOCAL synchronous_commit TO local"))
    session.execute(
        update(Token)
        .where(
            Token.id == token_id,
            or_(
                Token.last_used_at.is_(None),
                Token.last_used_at < func.now() - LAST_USE_PRECISION,
            ),
        )
        .values(last_used_at=func.now())
    )


class TokenCache:
    """Answers about tokens, each kept for `ttl` seconds (so a revocation lands in `ttl`).

    Unknown tokens are remembered for `ttl` too, so a client repeating a bad token costs
    no database lookup per request; and the hashes of tokens that were valid stay known
    (`was_valid`) after their answer expires, so the API can serve its users before it
    applies a failed-login limit (see api.limits).
    """

    MAX_ENTRIES = 10_000

    def __init__(
        self,
        engine: Callable[[], Engine],
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._valid: set[str] = set()
        self._lock = threading.Lock()

    def principal(self, plain: str) -> Principal | None:
        """The token's principal, from the cache or (at most once per `ttl`) the database."""
        token_hash = hash_token(plain)
        now = self.clock()
        entry = self._entries.get(token_hash)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        principal = self._load(token_hash)
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[token_hash] = (now, principal)
            if principal is None:
                self._valid.discard(token_hash)
            else:
                if len(self._valid) >= self.MAX_ENTRIES:
                    self._valid.clear()
                self._valid.add(token_hash)
        return principal

    def was_valid(self, plain: str) -> bool:
        """Whether the token was valid when last looked up (without looking it up now)."""
        return hash_token(plain) in self._valid

    def _load(self, token_hash: str) -> Principal | None:
        with Session(self.engine()) as session, session.begin():
            found = session.execute(_valid_token(token_hash)).one_or_none()
            if found is None:
                return None
            last_used_at = found[2]
            if last_used_at is None or _older_than(last_used_at, LAST_USE_PRECISION):
                record_use(session, found[1])
            return _principal(found[0])


def _older_than(moment: datetime, age: timedelta) -> bool:
    return datetime.now(moment.tzinfo) - moment > age
