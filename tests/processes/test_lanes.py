"""Lanes: single adjustments and bulk batches reach different queues and workers; the
events lane's workers run the event pump."""

from __future__ import annotations

import time
from urllib.parse import urljoin

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

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


def _unnumbered(sessions: sessionmaker[Session], tenant_id: str) -> int:
    with sessions() as session:
        return int(
            session.scalar(
                text("SELECT count(*) FROM events WHERE tenant_id = :t AND id IS NULL"),
                {"t": tenant_id},
            )
            or 0
        )


def test_only_a_worker_of_the_events_lane_numbers_events_and_beat_is_not_needed(
    stack_without_workers: Stack,
    stack_factory: Factory,
    stack_sessions: sessionmaker[Session],
) -> None:
    stack = stack_without_workers
    caller = stack_factory.caller(Role.MODERATOR)
    stack.start_worker("interactive", lanes="interactive,relay")
    answer = requests.post(
        f"{stack.base_url}/api/v2/score/",
        json={"user_id": stack_factory.user().id, "score": 2, "comment": "pumped"},
        headers={"Authorization": f"Bearer {caller.token}", "Prefer": "wait=10"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    time.sleep(2)  # eight of the pump's intervals: no process of this stack pumps yet
    assert _unnumbered(stack_sessions, caller.tenant_id) == 3

    stack.stop("beat")
    stack.start_worker("events", lanes="events,webhooks")
    deadline = time.monotonic() + 30
    while _unnumbered(stack_sessions, caller.tenant_id):
        assert time.monotonic() < deadline, "the events worker did not number the events"
        time.sleep(0.1)
