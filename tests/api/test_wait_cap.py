"""TALLY_MAX_WAIT: `Prefer: wait=N` waits at most max_wait, then answers 202."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from flask import Flask

from tests.factories import Caller, Factory

MAX_WAIT = 0.5


@pytest.mark.timeout(30)  # without the cap this would wait 600 s
def test_a_long_wait_is_capped_at_max_wait(
    app_with: Callable[..., Flask], factory: Factory, moderator: Caller
) -> None:
    """No worker runs, so the request is never applied: the answer comes from the cap."""
    client = app_with(max_wait=MAX_WAIT, default_wait=5.0).test_client()
    user = factory.user()
    started = time.monotonic()
    response = client.post(
        "/api/v2/score/",
        json={"user_id": user.id, "score": 1, "comment": "waits"},
        headers=moderator.headers | {"Prefer": "wait=600"},
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.json
    assert response.headers["Location"].startswith("/api/v2/score/requests/")
    assert elapsed < MAX_WAIT + 2.0  # the cap, plus a margin for a slow machine
