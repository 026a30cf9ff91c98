"""`tally batches show ID`: a batch's status, followed to the end with a progress bar."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests
from sqlalchemy import update

from shared.models import Account, Role
from tests.factories import Factory
from tests.processes.conftest import Stack

pytestmark = pytest.mark.processes


def _show(stack: Stack, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "batches", "show", *args, "--url", stack.base_url],
        env=os.environ | {"TALLY_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_show_a_queued_batch_then_follow_it_to_its_rejection(
    stack_without_workers: Stack, stack_factory: Factory, stack_sessions
) -> None:
    stack = stack_without_workers
    caller = stack_factory.caller(Role.MODERATOR)
    users = [stack_factory.user() for _ in range(20)]
    with stack_sessions.begin() as session:
        session.execute(
            update(Account).where(Account.user_id == users[0].id).values(status="frozen")
        )
    items = [{"user_id": user.id, "score": 2, "comment": "show"} for user in users * 10]
    answer = requests.post(
        stack.base_url + "/api/v2/score/bulk",
        json={"items": items},
        headers={"Authorization": f"Bearer {caller.token}", "Idempotency-Key": "show-1"},
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["id"]
    # The batch made the accounts; one of them is frozen before any worker runs.
    with stack_sessions.begin() as session:
        frozen = update(Account).where(Account.user_id == users[0].id).values(status="frozen")
        assert session.execute(frozen).rowcount == 1

    once = _show(stack, caller.token, batch_id, "--no-follow", "--json")
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout)["status"] == "queued"
    assert "batch" not in once.stderr  # no bar without following

    stack.start_worker("worker")
    followed = _show(stack, caller.token, batch_id)
    assert followed.returncode == 1, followed.stdout + followed.stderr
    assert f"batch {batch_id}" in followed.stderr  # the bar's label (no bar off a terminal)
    summary = "completed_with_rejections, 200 items: 190 applied, 10 rejected, 0 pending"
    assert f"batch {batch_id}: {summary}" in followed.stdout
    assert followed.stdout.count("the account is frozen") == 10


def test_an_unknown_batch_exits_1(stack_without_workers: Stack, stack_factory: Factory) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    result = _show(stack_without_workers, caller.token, "01NOSUCHBATCH")
    assert result.returncode == 1
    assert "01NOSUCHBATCH" in result.stderr and "Traceback" not in result.stderr
