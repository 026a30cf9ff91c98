"""POST /api/v2/users/ and GET /api/v2/users/{id}: admin-only provisioning."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Role, User
from tests.factories import Caller, Factory


def test_create_then_read_with_reputation(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None
) -> None:
    admin = factory.caller(Role.ADMIN)
    body = {
        "username": "luigi",
        "external_id": "usr_luigi",
        "real_name": "Luigi Verdi",
        "email": "luigi@example.com",
        "avatar": "https://example.com/l.png",
        "description": "plumber",
        "role": "user",
    }
    created = client.post("/api/v2/users/", json=body, headers=admin.headers)
    assert created.status_code == 201, created.json
    assert created.json == body | {"id": created.json["id"], "reputation": 0}

    award = {"user_id": created.json["id"], "score": 15, "comment": "welcome"}
    assert client.post("/api/v2/score/", json=award, headers=moderator.headers).status_code == 201
    read = client.get(f"/api/v2/users/{created.json['id']}", headers=admin.headers)
    assert read.status_code == 200
    assert read.json["reputation"] == 15


def test_duplicates_are_409_and_bad_bodies_400(client: FlaskClient, factory: Factory) -> None:
    admin = factory.caller(Role.ADMIN)
    assert (
        client.post("/api/v2/users/", json={"username": "peach"}, headers=admin.headers).status_code
        == 201
    )
    again = client.post("/api/v2/users/", json={"username": "peach"}, headers=admin.headers)
    assert again.status_code == 409
    assert again.json["errors"][0]["field"] == "username"
    for body, field in [
        ({}, "username"),
        ({"username": "x", "role": "king"}, "role"),
        ({"username": "u" * 151}, "username"),
        # Digits only would shadow a user's integer id on /admin/points/{user_id} (issue 20).
        ({"username": "digits", "external_id": "42"}, "external_id"),
    ]:
        response = client.post("/api/v2/users/", json=body, headers=admin.headers)
        assert response.status_code == 400, body
        assert response.json["errors"][0]["field"] == field


def test_only_admins_and_only_their_tenant(
    client: FlaskClient, factory: Factory, moderator: Caller, sessions
) -> None:
    assert (
        client.post(
            "/api/v2/users/", json={"username": "toad"}, headers=moderator.headers
        ).status_code
        == 403
    )
    stranger = Factory(sessions).user()
    admin = factory.caller(Role.ADMIN)
    assert client.get(f"/api/v2/users/{stranger.id}", headers=admin.headers).status_code == 404
    assert (
        client.get("/api/v2/users/99999999999999999999", headers=admin.headers).status_code == 404
    )


def test_the_list_pages_the_tenants_users_in_id_order_with_their_reputation(
    client: FlaskClient, factory: Factory, moderator: Caller, worker: None
) -> None:
    admin = factory.caller(Role.ADMIN)
    users = [factory.user(external_id=f"ext_{n}_{factory.tenant_id}") for n in range(3)]
    award = {"user_id": users[1].id, "score": 4, "comment": "listed"}
    assert client.post("/api/v2/score/", json=award, headers=moderator.headers).status_code == 201
    Factory(factory.sessions).user()  # another tenant's: never listed

    # Pages of two, followed by their `next` links; the admin and the moderator are users
    # of the tenant too.
    listed, url, query = [], "/api/v2/users/", {"limit": 2}
    while url:
        answer = client.get(url, query_string=query, headers=admin.headers)
        assert answer.status_code == 200, answer.json
        assert answer.json["count"] == 5
        listed += answer.json["results"]
        url, query = answer.json["next"], None
    everyone = [moderator.user_id, admin.user_id, *(user.id for user in users)]
    assert [user["id"] for user in listed] == sorted(everyone)
    by_key = client.get(
        "/api/v2/users/", query_string={"external_id": users[1].external_id}, headers=admin.headers
    ).json
    (found,) = by_key["results"]
    assert found == client.get(f"/api/v2/users/{users[1].id}", headers=admin.headers).json
    assert (found["username"], found["reputation"]) == (users[1].username, 4)
    by_name = client.get(
        "/api/v2/users/", query_string={"username": users[2].username}, headers=admin.headers
    )
    assert [u["id"] for u in by_name.json["results"]] == [users[2].id]

    assert client.get("/api/v2/users/", headers=moderator.headers).status_code == 403
    bad = client.get("/api/v2/users/", query_string={"limit": "ten"}, headers=admin.headers)
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "limit"


# Each text field of a user, at its column's length and one character past it (issue 21
# item 10: an email of 255 characters reached the database and came back as a 400 that
# named no field).
USER_TEXT_COLUMNS = ("username", "external_id", "real_name", "email", "avatar", "role")


def _column_length(name: str) -> int:
    length: int = User.__table__.c[name].type.length
    return length


@pytest.mark.parametrize("field", USER_TEXT_COLUMNS)
def test_a_text_field_past_its_column_is_a_400_naming_it(
    client: FlaskClient, factory: Factory, sessions: sessionmaker[Session], field: str
) -> None:
    admin = factory.caller(Role.ADMIN)
    length = _column_length(field)
    body = {"username": "u_" + factory.tenant_id, field: "x" * (length + 1)}
    response = client.post("/api/v2/users/", json=body, headers=admin.headers)
    assert response.status_code == 400, response.json
    assert response.mimetype == "application/problem+json"
    assert [(e["field"], e["code"]) for e in response.json["errors"]] == [(field, "too_long")]
    assert str(length) in response.json["errors"][0]["message"]
    with sessions() as session:
        assert session.scalar(select(func.count()).where(User.tenant_id == factory.tenant_id)) == 1


@pytest.mark.parametrize("field", [f for f in USER_TEXT_COLUMNS if f != "role"])
def test_a_text_field_as_long_as_its_column_is_stored(
    client: FlaskClient, factory: Factory, field: str
) -> None:
    admin = factory.caller(Role.ADMIN)
    value = "a" * _column_length(field)
    body = {"username": "u_" + factory.tenant_id, field: value}
    response = client.post("/api/v2/users/", json=body, headers=admin.headers)
    assert response.status_code == 201, response.json
    assert response.json[field] == value
