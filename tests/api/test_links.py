"""Links in answers never come from the Host header: relative, or under TALLY_PUBLIC_URL."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient

from tests.factories import Caller, Factory

EVIL = {"Host": "evil.example"}


def _post(client: FlaskClient, factory: Factory, moderator: Caller) -> tuple[str, str]:
    user = factory.user()
    single = client.post(
        "/api/v2/score/",
        json={"user_id": user.id, "score": 1, "comment": "linked"},
        headers=moderator.headers | EVIL | {"Prefer": "respond-async"},
    )
    bulk = client.post(
        "/api/v2/score/bulk",
        json={"items": [{"user_id": user.id, "score": 1, "comment": "bulk"}]},
        headers=moderator.headers | EVIL | {"Idempotency-Key": secrets.token_hex(8)},
    )
    assert (single.status_code, bulk.status_code) == (202, 202), (single.json, bulk.json)
    return single.headers["Location"], bulk.headers["Location"]


def test_a_forged_host_header_never_reaches_a_link(
    client: FlaskClient, factory: Factory, moderator: Caller
) -> None:
    single, bulk = _post(client, factory, moderator)
    assert single.startswith("/api/v2/score/requests/")
    assert bulk.startswith("/api/v2/score/batches/")
    page = client.get("/api/v2/score/?limit=1", headers=moderator.headers | EVIL).json
    for link in (page["next"], page["previous"]):
        assert link is None or link.startswith("/api/v2/score/?")
    assert "evil" not in str(page)


def test_links_are_absolute_under_the_public_url(
    app_with: Callable[..., Flask], factory: Factory, moderator: Caller
) -> None:
    client = app_with(public_url="https://tally.example.com/").test_client()
    single, bulk = _post(client, factory, moderator)
    assert single.startswith("https://tally.example.com/api/v2/score/requests/")
    assert bulk.startswith("https://tally.example.com/api/v2/score/batches/")
