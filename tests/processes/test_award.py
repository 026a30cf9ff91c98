"""`tally award FILE.csv` against a running stack: progress, summary, exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from shared.models import Account, Role
from tests.factories import Factory
from tests.processes.conftest import Stack

pytestmark = pytest.mark.processes


def _award(stack: Stack, token: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "award", str(path), "--url", stack.base_url, *args],
        env=os.environ | {"TALLY_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_award_applies_a_file_and_reports_rejections(
    stack: Stack, stack_factory: Factory, stack_sessions, tmp_path: Path
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    users = [stack_factory.user() for _ in range(5)]
    path = tmp_path / "awards.csv"
    path.write_text(
        "username,user_id,variation_points,context,comment\n"
        + "".join(f"{u.username},,{i + 1},,spring prize\n" for i, u in enumerate(users))
    )
    result = _award(stack, caller.token, path, "--context", "contest|spring|apis")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 applied, 0 rejected" in result.stdout
    assert "applying" in result.stderr  # the progress bar

    frozen = users[0]
    with stack_sessions.begin() as session:
        session.execute(update(Account).where(Account.user_id == frozen.id).values(status="frozen"))
    path.write_text(
        f"{frozen.username},,1,contest|summer,\n{users[1].username},,2,contest|summer,\n"
    )
    result = _award(stack, caller.token, path)
    assert result.returncode == 1
    assert "1 applied, 1 rejected" in result.stdout
    assert "the account is frozen" in result.stdout

    path.write_text("nobody,,1,contest|summer,\n")
    result = _award(stack, caller.token, path)
    assert result.returncode == 2
    assert "row 1: username: no such user" in result.stderr
