"""POST /api/v2/score/ refuses bad input with a 4xx naming the field, and writes nothing."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Role
from tests.factories import Caller, Factory, count_rows


def _post_invalid(
    client: FlaskClient, caller: Caller, sessions: sessionmaker[Session], body: dict, **kwargs
) -> dict:
    """POST a body that must be refused with 400; return the problem body."""
    response = client.post("/api/v2/score/", json=body, headers=caller.headers, **kwargs)
    assert response.status_code == 400, response.json
    assert response.mimetype == "application/problem+json"
    with sessions() as session:
        assert count_rows(session, caller.tenant_id) == (0, 0)
    return response.json


def _fields(problem: dict) -> dict[str, str]:
    return {error["field"]: error["code"] for error in problem["errors"]}


def test_user_id_and_username_together_are_refused(client, factory, moderator, sessions) -> None:
    user = factory.user()
    body = {"user_id": user.id, "username": user.username, "score": 1, "comment": "x"}
    problem = _post_invalid(client, moderator, sessions, body)
    assert _fields(problem) == {"user_id": "conflict", "username": "conflict"}


def test_neither_user_id_nor_username_is_refused(client, moderator, sessions) -> None:
    problem = _post_invalid(client, moderator, sessions, {"score": 1, "comment": "x"})
    assert _fields(problem) == {"user_id": "required"}


def test_score_zero_is_refused(client, factory, moderator, sessions) -> None:
    user = factory.user()
    problem = _post_invalid(
        client, moderator, sessions, {"user_id": user.id, "score": 0, "comment": "x"}
    )
    assert _fields(problem) == {"score": "zero"}


@pytest.mark.parametrize(
    "score", [1.5, 2.0, True, "1e3", "+5", " 10", "0x10", "\uff11\uff10", "ten", [1], {"a": 1}]
)
def test_score_that_is_not_an_integer_is_refused(client, factory, moderator, sessions, score):
    user = factory.user()
    problem = _post_invalid(
        client, moderator, sessions, {"user_id": user.id, "score": score, "comment": "x"}
    )
    assert _fields(problem) == {"score": "integer"}


def test_score_missing_is_refused(client, factory, moderator, sessions) -> None:
    user = factory.user()
    problem = _post_invalid(client, moderator, sessions, {"user_id": user.id, "comment": "x"})
    assert _fields(problem) == {"score": "required"}


def test_score_beyond_the_bound_is_refused(client, factory, moderator, sessions) -> None:
    user = factory.user()
    problem = _post_invalid(
        client, moderator, sessions, {"user_id": user.id, "score": 10**9 + 1, "comment": "x"}
    )
    assert _fields(problem) == {"score": "out_of_range"}


def test_neither_context_nor_comment_is_refused(client, factory, moderator, sessions) -> None:
    user = factory.user()
    problem = _post_invalid(
        client, moderator, sessions, {"user_id": user.id, "score": 1, "comment": "   "}
    )
    assert _fields(problem) == {"reputation_context": "required"}


@pytest.mark.parametrize("context", ["a||b", "a|", "|a", "a| |b"])
def test_context_with_an_empty_segment_is_refused(client, factory, moderator, sessions, context):
    user = factory.user()
    problem = _post_invalid(
        client, moderator, sessions, {"user_id": user.id, "score": 1, "reputation_context": context}
    )
    assert _fields(problem) == {"reputation_context": "empty_segment"}


def test_unknown_user_is_refused(client, moderator, sessions) -> None:
    problem = _post_invalid(
        client, moderator, sessions, {"user_id": 999999999, "score": 1, "comment": "x"}
    )
    assert _fields(problem) == {"user_id": "not_found"}


def test_unknown_username_is_refused(client, moderator, sessions) -> None:
    problem = _post_invalid(
        client, moderator, sessions, {"username": "nobody", "score": 1, "comment": "x"}
    )
    assert _fields(problem) == {"username": "not_found"}


def test_user_of_another_tenant_is_unknown(client, sessions, moderator) -> None:
    other = Factory(sessions).user()
    problem = _post_invalid(
        client, moderator, sessions, {"user_id": other.id, "score": 1, "comment": "x"}
    )
    assert _fields(problem) == {"user_id": "not_found"}


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("comment", "x" * 2001, "too_long"),
        ("comment", "nul\x00byte", "invalid_character"),
        ("comment", "lone \ud800 surrogate", "invalid_character"),
        ("reputation_context", "c" * 256, "too_long"),
        ("username", "u" * 151, "too_long"),
    ],
)
def test_text_limits(client, factory, moderator, sessions, field, value, code) -> None:
    user = factory.user()
    body = {"user_id": user.id, "score": 1, "comment": "ok", field: value}
    if field == "username":
        del body["user_id"]
    problem = _post_invalid(client, moderator, sessions, body)
    assert _fields(problem) == {field: code}


def test_every_bad_field_is_reported_at_once(client, moderator, sessions) -> None:
    problem = _post_invalid(client, moderator, sessions, {"score": "abc", "comment": ""})
    assert _fields(problem) == {"score": "integer"}
    problem = _post_invalid(client, moderator, sessions, {"score": 0})
    assert _fields(problem) == {
        "user_id": "required",
        "score": "zero",
        "reputation_context": "required",
    }


def test_missing_token_is_401_with_a_challenge(client, sessions, factory) -> None:
    response = client.post("/api/v2/score/", json={"user_id": 1, "score": 1, "comment": "x"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.mimetype == "application/problem+json"


def test_bad_token_is_401(client) -> None:
    response = client.post(
        "/api/v2/score/",
        json={"user_id": 1, "score": 1, "comment": "x"},
        headers={"Authorization": "Bearer tly_not-a-real-token"},
    )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_user_role_is_403(client, factory, sessions) -> None:
    caller = factory.caller(Role.USER)
    target = factory.user()
    response = client.post(
        "/api/v2/score/",
        json={"user_id": target.id, "score": 1, "comment": "x"},
        headers=caller.headers,
    )
    assert response.status_code == 403
    with sessions() as session:
        assert count_rows(session, caller.tenant_id) == (0, 0)


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"\xff\xfe\x00garbage", "application/json", 400),
        (b"[1, 2, 3]", "application/json", 400),
        (b"null", "application/json", 400),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400),
        (b"<xml/>", "application/xml", 415),
        (b"x" * (2 * 1024 * 1024), "application/json", 413),
        (b"user=1&score=" + b"9" * (2 * 1024 * 1024), "application/x-www-form-urlencoded", 413),
    ],
)
def test_garbage_and_oversized_bodies_are_4xx(
    client, moderator, sessions, data, content_type, status
) -> None:
    response = client.post(
        "/api/v2/score/", data=data, content_type=content_type, headers=moderator.headers
    )
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    with sessions() as session:
        assert count_rows(session, moderator.tenant_id) == (0, 0)


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\u00e9", "tab\there"])
def test_bad_idempotency_key_is_refused(client, factory, moderator, sessions, key) -> None:
    user = factory.user()
    problem = _post_invalid(
        client,
        moderator,
        sessions,
        {"user_id": user.id, "score": 1, "comment": "x"},
        environ_overrides={"HTTP_IDEMPOTENCY_KEY": key},
    )
    assert _fields(problem) == {"Idempotency-Key": "invalid"}


def test_user_id_beyond_any_stored_id_is_unknown(client, moderator, sessions) -> None:
    problem = _post_invalid(
        client, moderator, sessions, {"user_id": 2**70, "score": 1, "comment": "x"}
    )
    assert _fields(problem) == {"user_id": "not_found"}
