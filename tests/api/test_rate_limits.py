"""Rate limits: requests per token and failed authentications per client address."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from api.limits import LIMITS_EXTENSION
from api.resources import TOKEN_CACHE
from shared.intake.auth import TokenCache
from tests.factories import Caller


def test_past_the_token_limit_a_429_problem_with_retry_after(
    app_with: Callable[..., Flask], moderator: Caller
) -> None:
    client = app_with(rate_limit="3/minute").test_client()
    answers = [
        client.get("/api/v2/score/reputation_types/", headers=moderator.headers) for _ in range(4)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    assert limited.mimetype == "application/problem+json"
    assert limited.json["type"].endswith("/too-many-requests")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


def test_the_limit_is_per_token(app_with: Callable[..., Flask], factory, moderator: Caller) -> None:
    client = app_with(rate_limit="2/minute").test_client()
    other = factory.caller()
    for _ in range(2):
        assert (
            client.get("/api/v2/score/reputation_types/", headers=moderator.headers).status_code
            == 200
        )
    assert (
        client.get("/api/v2/score/reputation_types/", headers=moderator.headers).status_code == 429
    )
    assert client.get("/api/v2/score/reputation_types/", headers=other.headers).status_code == 200


def test_failed_authentications_are_limited_per_address(
    app_with: Callable[..., Flask], moderator: Caller
) -> None:
    client = app_with(auth_failure_limit="3/minute").test_client()
    assert client.get("/api/v2/score/", headers=moderator.headers).status_code == 200
    bad = {"Authorization": "Bearer tly_not-a-token"}
    codes = [client.get("/api/v2/score/", headers=bad).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    # The address may guess no more until the window ends, whatever token it tries next...
    another_guess = {"Authorization": "Bearer tly_another-guess"}
    blocked = client.get("/api/v2/score/", headers=another_guess)
    assert blocked.status_code == 429 and "Retry-After" in blocked.headers
    # ...while a token this process has seen valid is served: users behind the same
    # address are not locked out.
    assert client.get("/api/v2/score/", headers=moderator.headers).status_code == 200
    # Another address is not.
    other = client.get("/api/v2/score/", headers=bad, environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other.status_code == 401


def token_cache_of(app: Flask) -> TokenCache:
    cache: TokenCache = app.extensions[TOKEN_CACHE]
    return cache


def _count_lookups(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The token hashes the app looks up in the database, in order."""
    cache = token_cache_of(app)
    lookups: list[str] = []
    load = cache._load

    def counted(token_hash: str) -> object:
        lookups.append(token_hash)
        return load(token_hash)

    monkeypatch.setattr(cache, "_load", counted)
    return lookups


def test_bad_tokens_count_on_every_route_and_past_the_limit_cost_no_lookup(
    app_with: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_with(auth_failure_limit="10/minute")
    lookups = _count_lookups(app, monkeypatch)
    client = app.test_client()
    codes = []
    for number in range(60):
        guess = {"Authorization": f"Bearer tly_guess-{number}"}
        method = ("GET", "DELETE", "OPTIONS")[number % 3]
        codes.append(client.open("/nothing-here", method=method, headers=guess).status_code)
    assert set(codes[:10]) <= {404, 405, 200} and codes[10:] == [429] * 50, codes
    assert len(lookups) == 10


def test_a_new_token_from_an_address_past_its_failures_waits_for_the_window(
    app_with: Callable[..., Flask], moderator: Caller
) -> None:
    client = app_with(auth_failure_limit="2/minute").test_client()
    for number in range(2):
        client.get("/api/v2/score/", headers={"Authorization": f"Bearer tly_guess-{number}"})
    assert client.get("/api/v2/score/", headers=moderator.headers).status_code == 429


def test_an_unknown_token_is_looked_up_once_per_cache_period(
    app_with: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_with(auth_failure_limit="100/minute", token_cache_seconds=60)
    lookups = _count_lookups(app, monkeypatch)
    client = app.test_client()
    bad = {"Authorization": "Bearer tly_revoked-long-ago"}
    assert [client.get("/api/v2/score/", headers=bad).status_code for _ in range(5)] == [401] * 5
    assert len(lookups) == 1


def test_points_routes_answer_429_in_their_envelope(
    app_with: Callable[..., Flask], moderator: Caller
) -> None:
    client = app_with(rate_limit="1/minute").test_client()
    client.get("/admin/points/1", headers=moderator.headers)
    limited = client.get("/admin/points/1", headers=moderator.headers)
    assert limited.status_code == 429
    assert limited.json["code"] == 429 and "Retry-After" in limited.headers


def test_a_token_counted_in_batches_still_stops_at_its_limit(
    app_with: Callable[..., Flask], moderator: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_with(rate_limit="400/minute", api_processes=1)
    limits = app.extensions[LIMITS_EXTENSION]
    round_trips = 0
    hit = limits.shared.hit

    def counted_hit(*args: object, **kwargs: object) -> bool:
        nonlocal round_trips
        round_trips += 1
        return hit(*args, **kwargs)

    monkeypatch.setattr(limits.shared, "hit", counted_hit)
    client = app.test_client()
    codes = [
        client.get("/api/v2/score/reputation_types/", headers=moderator.headers).status_code
        for _ in range(401)
    ]
    assert codes == [200] * 400 + [429]
    # Far from the limit, eight requests share one round trip; near it, one each.
    assert round_trips < 100, round_trips


def test_every_answer_says_its_limit_in_ratelimit_fields_and_a_429_its_request_id(
    app_with: Callable[..., Flask], moderator: Caller
) -> None:
    """Issue 24: RateLimit and RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers) on
    answers and on 429s; X-Request-ID on a 429 as on every answer."""
    client = app_with(rate_limit="3/minute", auth_failure_limit="2/minute").test_client()
    # An address of its own: the failures of the tests before count in the same window.
    client.environ_base["REMOTE_ADDR"] = "192.0.2.24"
    answers = [
        client.get("/api/v2/score/reputation_types/", headers=moderator.headers) for _ in range(4)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    for answer in answers:
        assert answer.headers["RateLimit-Policy"] == '"token";q=3;w=60'
    remaining = [int(a.headers["RateLimit"].split(";r=")[1].split(";")[0]) for a in answers]
    assert remaining == [2, 1, 0, 0]  # a limit this small is counted request by request
    reset = int(answers[-1].headers["RateLimit"].split(";t=")[1])
    assert reset == int(answers[-1].headers["Retry-After"]) and 1 <= reset <= 60
    limited = client.get(
        "/api/v2/score/reputation_types/",
        headers=moderator.headers | {"X-Request-ID": "support-case-7"},
    )
    assert limited.status_code == 429 and limited.headers["X-Request-ID"] == "support-case-7"

    bad = {"Authorization": "Bearer tly_not-a-token"}
    codes = [client.get("/api/v2/score/", headers=bad).status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    blocked = client.get("/api/v2/score/", headers=bad)
    assert blocked.headers["RateLimit-Policy"] == '"auth-failures";q=2;w=60'
    assert blocked.headers["RateLimit"].startswith('"auth-failures";r=0;t=')
    assert len(blocked.headers["X-Request-ID"]) == 32
