"""Lanes: single adjustments and bulk batches reach different queues and workers."""

from __future__ import annotations

import time
from urllib.parse import urljoin

import pytest
import requests

from shared.models import Role
from tests.factories import Factory
from tests.processes.conftest import Stack

pytestmark = pytest.mark.processes


def _batch_status(stack: Stack, token: str, url: str) -> str:
    answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return str(answer.json()["status"])


def test_single_adjustments_are_applied_while_a_batch_waits_for_the_bulk_workers(
    stack_without_workers: Stack, stack_factory: Factory
) -> None:
    stack = stack_without_workers
    caller = stack_factory.caller(Role.MODERATOR)
    contestants = [stack_factory.user() for _ in range(50)]
    single = stack_factory.user()
    headers = {"Authorization": f"Bearer {caller.token}"}
    stack.start_worker("interactive", lanes="interactive,relay")

    batch = requests.post(
        f"{stack.base_url}/api/v2/score/bulk",
        json={"items": [{"user_id": u.id, "score": 3} for u in contestants * 20],
              "reputation_context": "contest|lanes"},
        headers=headers | {"Idempotency-Key": "lanes-batch"},
        timeout=30,
    )  # fmt: skip
    assert batch.status_code == 202, batch.text
    batch_url = urljoin(batch.url, batch.headers["Location"])  # relative, as RFC 9110 allows
    answer = requests.post(
        f"{stack.base_url}/api/v2/score/",
        json={"user_id": single.id, "score": 1, "comment": "not behind the batch"},
        headers=headers | {"Idempotency-Key": "lanes-single", "Prefer": "wait=10"},
        timeout=30,
    )
    # The interactive worker applied the single adjustment and none of the batch.
    assert answer.status_code == 201, answer.text
    assert _batch_status(stack, caller.token, batch_url) == "queued"

    stack.start_worker("bulk", lanes="bulk")
    deadline = time.monotonic() + 30
    while _batch_status(stack, caller.token, batch_url) != "completed":
        assert time.monotonic() < deadline, "the bulk worker did not apply the batch"
        time.sleep(0.1)
