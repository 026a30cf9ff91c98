"""Tokens over HTTP: expired and revoked tokens are refused; last use is recorded sparingly."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import func, update
from sqlalchemy.orm import Session, sessionmaker

from shared.intake.auth import create_token
from shared.models import Role, Token, User
from tests.factories import Factory

URL = "/api/v2/score/reputation_types/"


def _token(
    sessions: sessionmaker[Session], user_id: int, expires_at: datetime | None = None
) -> tuple[int, str]:
    with sessions.begin() as session:
        token, plain = create_token(session, session.get_one(User, user_id), "t", expires_at)
        return token.id, plain


def _bearer(plain: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plain}"}


def test_an_expired_token_is_a_401_like_a_revoked_one(
    app_with: Callable[..., Flask], factory: Factory, sessions: sessionmaker[Session]
) -> None:
    client = app_with().test_client()
    user = factory.user(role=Role.MODERATOR)
    _, expired = _token(sessions, user.id, datetime.now(UTC) - timedelta(seconds=1))
    _, valid = _token(sessions, user.id, datetime.now(UTC) + timedelta(days=1))
    response = client.get(URL, headers=_bearer(expired))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert client.get(URL, headers=_bearer(valid)).status_code == 200


def test_a_revoked_token_is_refused_within_the_cache_time(
    app_with: Callable[..., Flask], factory: Factory, sessions: sessionmaker[Session]
) -> None:
    client = app_with(token_cache_seconds=0.3).test_client()
    user = factory.user(role=Role.MODERATOR)
    token_id, plain = _token(sessions, user.id)
    assert client.get(URL, headers=_bearer(plain)).status_code == 200
    with sessions.begin() as session:
        session.execute(update(Token).where(Token.id == token_id).values(revoked_at=func.now()))
    time.sleep(0.35)
    assert client.get(URL, headers=_bearer(plain)).status_code == 401


def test_last_use_is_recorded_at_most_once_a_minute(
    app_with: Callable[..., Flask], factory: Factory, sessions: sessionmaker[Session]
) -> None:
    client = app_with(token_cache_seconds=0).test_client()
    user = factory.user(role=Role.MODERATOR)
    token_id, plain = _token(sessions, user.id)
    with sessions() as session:
        assert session.get_one(Token, token_id).last_used_at is None
    assert client.get(URL, headers=_bearer(plain)).status_code == 200
    with sessions() as session:
        first = session.get_one(Token, token_id).last_used_at
    assert first is not None
    # Every request reads the token again (no cache), yet none rewrites the row.
    for _ in range(3):
        assert client.get(URL, headers=_bearer(plain)).status_code == 200
    with sessions() as session:
        assert session.get_one(Token, token_id).last_used_at == first
    # A minute later, the next use is recorded.
    with sessions.begin() as session:
        session.execute(
            update(Token)
            .where(Token.id == token_id)
            .values(last_used_at=func.now() - timedelta(minutes=2))
        )
    assert client.get(URL, headers=_bearer(plain)).status_code == 200
    with sessions() as session:
        assert session.get_one(Token, token_id).last_used_at > first
