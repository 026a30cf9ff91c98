"""A URL that matches no route is answered in the format of the routes it falls under."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.factories import Caller


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/admin/points/2/holds/null,null"),
        ("POST", "/admin/points/2/holds/x/capture"),
        ("GET", "/admin/points/2/nothing"),
    ],
)
def test_under_seed_002_routes_in_their_envelope(
    client: FlaskClient, moderator: Caller, method: str, path: str
) -> None:
    response = client.open(path, method=method, headers=moderator.headers)
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.json["code"] == 404 and "message" in response.json


def test_elsewhere_as_problem_details(client: FlaskClient, moderator: Caller) -> None:
    response = client.get("/api/v2/score/batches/x/nothing", headers=moderator.headers)
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
