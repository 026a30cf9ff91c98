"""Bodies over their route's limit are a 413 with nothing written, however they are framed.

A chunked body has no Content-Length: the server de-chunks it and marks the stream
terminated (`wsgi.input_terminated`), which is what these requests reproduce.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from api.body import LARGE_BODY_ROUTES
from shared.models import Batch, Role, User
from tests.factories import Caller, Factory, count_rows

LIMIT = 1000
BULK_LIMIT = 2000
RULE_ARGUMENT = re.compile(r"<(?:\w+:)?(\w+)>")


def _post_chunked(client: FlaskClient, path: str, body: bytes, caller: Caller,
                  content_type: str = "application/json") -> TestResponse:  # fmt: skip
    """POST without a Content-Length, as a server hands over a de-chunked body."""
    return client.post(
        path,
        input_stream=io.BytesIO(body),
        headers={
            **caller.headers,
            "Content-Type": content_type,
            "Idempotency-Key": "k-1",
            "Transfer-Encoding": "chunked",
        },
        environ_overrides={"wsgi.input_terminated": True},
    )


def _written(session: Session, tenant_id: str) -> tuple[int, int, int, int]:
    """(requests, ledger entries, batches, users) of the tenant."""
    batches = session.scalar(select(func.count()).where(Batch.tenant_id == tenant_id)) or 0
    users = session.scalar(select(func.count()).where(User.tenant_id == tenant_id)) or 0
    return (*count_rows(session, tenant_id), batches, users)


def _post_routes(app: Flask, user_id: int) -> list[str]:
    """Every route of the app that takes a body, with its path arguments filled in."""
    return sorted(
        RULE_ARGUMENT.sub(str(user_id), rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.methods and "POST" in rule.methods
    )


@pytest.fixture
def small_app(app_with: Callable[..., Flask]) -> Flask:
    return app_with(max_body_bytes=LIMIT, bulk_max_body_bytes=BULK_LIMIT)


def test_every_body_route_refuses_a_chunked_body_over_its_limit(
    small_app: Flask, factory: Factory, sessions: sessionmaker[Session]
) -> None:
    admin = factory.caller(Role.ADMIN)
    user = factory.user()
    client = small_app.test_client()
    routes = _post_routes(small_app, user.id)
    assert len(routes) >= 5, routes
    with sessions() as session:
        before = _written(session, factory.tenant_id)
    for path in routes:
        limit = BULK_LIMIT if path.endswith(("/bulk", "/import/")) else LIMIT
        # A JSON object just over the limit that would be valid if it were cut short.
        padding = "x" * limit
        body = json.dumps({"user_id": user.id, "score": 1, "comment": padding}).encode()
        response = _post_chunked(client, path, body, admin)
        assert response.status_code == 413, (path, response.status_code, response.data[:200])
    with sessions() as session:
        assert _written(session, factory.tenant_id) == before


def test_a_streamed_ndjson_batch_over_the_limit_is_refused_not_cut(
    small_app: Flask, factory: Factory, moderator: Caller, sessions: sessionmaker[Session]
) -> None:
    """The reported case: 30 lines, about 3 kB, chunked; the first 20 used to be accepted."""
    user = factory.user()
    item = {"user_id": user.id, "score": 1, "reputation_context": "contest|spring"}
    lines = [json.dumps(item | {"comment": f"contest award {n:04}"}) for n in range(30)]
    body = ("\n".join(lines) + "\n").encode()
    assert BULK_LIMIT < len(body) < 2 * BULK_LIMIT
    client = small_app.test_client()
    response = _post_chunked(
        client, "/api/v2/score/bulk", body, moderator, content_type="application/x-ndjson"
    )
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    # With a Content-Length it was refused before reading, and still is.
    framed = client.post(
        "/api/v2/score/bulk",
        data=body,
        content_type="application/x-ndjson",
        headers={**moderator.headers, "Idempotency-Key": "k-2"},
    )
    assert framed.status_code == 413
    with sessions() as session:
        assert _written(session, factory.tenant_id)[:3] == (0, 0, 0)


def test_a_chunked_form_over_the_default_limit_is_refused(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions: sessionmaker[Session]
) -> None:
    """The reported case: a 70 kB form on default settings was taken from its first 64 kB."""
    user = factory.user()
    body = f"user_id={user.id}&score=1&comment=".encode() + b"x" * (70 * 1024)
    response = _post_chunked(
        client, "/api/v2/score/", body, moderator, "application/x-www-form-urlencoded"
    )
    assert response.status_code == 413
    with sessions() as session:
        assert count_rows(session, factory.tenant_id) == (0, 0)


def test_a_chunked_body_within_the_limit_is_accepted_whole(
    small_app: Flask, factory: Factory, moderator: Caller
) -> None:
    user = factory.user()
    body = json.dumps({"user_id": user.id, "score": 3, "comment": "c" * 500}).encode()
    response = _post_chunked(small_app.test_client(), "/api/v2/score/", body, moderator)
    assert response.status_code in (201, 202), response.json
    assert response.json.get("comment", "c" * 500) == "c" * 500


def test_the_large_body_routes_are_the_bulk_routes(flask_app: Flask) -> None:
    """api.front sizes its reading by LARGE_BODY_ROUTES: a renamed view must stay in it."""
    bulk_routes = {
        rule.endpoint
        for rule in flask_app.url_map.iter_rules()
        if "POST" in (rule.methods or ())
        and rule.rule in ("/api/v2/score/bulk", "/api/v2/score/import/")
    }
    assert bulk_routes == LARGE_BODY_ROUTES
