"""X-Request-ID: the client's id is echoed on every answer; without a usable one, one is made."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from tests.factories import Caller

URL = "/api/v2/score/reputation_types/"
GENERATED = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.parametrize("sent", ["abc-123", "x" * 200, "req 1/2 ~!"])
def test_a_sent_id_is_echoed(client: FlaskClient, moderator: Caller, sent: str) -> None:
    response = client.get(URL, headers=moderator.headers | {"X-Request-ID": sent})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == sent


def test_an_id_is_echoed_on_errors_too(client: FlaskClient) -> None:
    response = client.get(URL, headers={"X-Request-ID": "no-token"})  # 401
    assert response.status_code == 401 and response.headers["X-Request-ID"] == "no-token"
    response = client.get("/no/such/route", headers={"X-Request-ID": "lost"})
    assert response.status_code == 404 and response.headers["X-Request-ID"] == "lost"


def test_without_an_id_a_new_one_is_made_for_each_request(
    client: FlaskClient, moderator: Caller
) -> None:
    first = client.get(URL, headers=moderator.headers).headers["X-Request-ID"]
    second = client.get(URL, headers=moderator.headers).headers["X-Request-ID"]
    assert GENERATED.match(first) and GENERATED.match(second) and first != second


@pytest.mark.parametrize("unusable", ["", "x" * 201, "caf\u00e9", "a\tb"])
def test_an_unusable_id_is_replaced(client: FlaskClient, moderator: Caller, unusable: str) -> None:
    headers = moderator.headers | {"X-Request-ID": unusable}
    assert GENERATED.match(client.get(URL, headers=headers).headers["X-Request-ID"])
