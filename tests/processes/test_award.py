"""`tally award FILE.csv` against a running stack: progress, summary, exit status."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from cli.embedded import free_port
from shared.models import Account, AdjustmentRequest, Batch, Role
from tests.factories import Factory, assert_ledger_consistent
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
    result = _award(stack, caller.token, path, "--key", "spring", "--context", "contest|spring")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rows: 5 new, 0 sent before (not applied again); 5 applied, 0 rejected" in (
        result.stdout
    )
    assert "applying" in result.stderr  # the progress bar

    frozen = users[0]
    with stack_sessions.begin() as session:
        session.execute(update(Account).where(Account.user_id == frozen.id).values(status="frozen"))
    path.write_text(
        f"{frozen.username},,1,contest|summer,\n{users[1].username},,2,contest|summer,\n"
    )
    result = _award(stack, caller.token, path, "--key", "summer")
    assert result.returncode == 1
    assert "1 applied, 1 rejected" in result.stdout
    assert f"rejected row 1 ({frozen.username}): the account is frozen" in result.stdout

    path.write_text("nobody,,1,contest|summer,\n")
    result = _award(stack, caller.token, path, "--key", "autumn")
    assert result.returncode == 1  # refused by the server
    assert "row 1 (nobody): username: no such user" in result.stderr


def test_award_sends_a_large_file_in_batches_and_a_rerun_after_a_kill_creates_no_duplicate(
    stack: Stack, stack_factory: Factory, stack_sessions, tmp_path: Path
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    users = [stack_factory.user() for _ in range(25)]
    rows, size = 4000, 200  # 20 batches
    path = tmp_path / "contest.csv"
    lines = (f"{users[n % 25].username},,{1 + n % 7},contest|resume,row {n}\n" for n in range(rows))
    path.write_text("username,user_id,variation_points,context,comment\n" + "".join(lines))
    expected = {
        user.id: sum(1 + n % 7 for n in range(rows) if n % 25 == i) for i, user in enumerate(users)
    }
    prefix = "resume:batch-%"

    def batches() -> int:
        with stack_sessions() as session:
            return session.scalar(
                select(func.count()).select_from(Batch).where(Batch.idempotency_key.like(prefix))
            )

    first = subprocess.Popen(
        [sys.executable, "-m", "cli", "award", str(path), "--url", stack.base_url,
         "--key", "resume", "--batch-size", str(size)],
        env=os.environ | {"TALLY_TOKEN": caller.token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while batches() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    first.kill()
    first.wait()
    time.sleep(0.5)  # a batch whose POST was in flight may still commit
    sent_before_kill = batches()
    assert 2 <= sent_before_kill < rows // size, sent_before_kill  # the kill came half-way

    result = _award(stack, caller.token, path, "--key", "resume", "--batch-size", str(size))
    assert result.returncode == 0, result.stdout + result.stderr
    # The batches accepted before the kill are replayed; the rest are new and applied.
    new = rows - sent_before_kill * size
    assert f"{rows} rows: {new} new, {rows - new} sent before (not applied again);" in (
        result.stdout
    )
    assert f"; {new} applied, 0 rejected" in result.stdout
    assert batches() == rows // size
    with stack_sessions() as session:
        per_user = dict(
            session.execute(
                select(AdjustmentRequest.user_id, func.count())
                .where(AdjustmentRequest.user_id.in_(expected))
                .group_by(AdjustmentRequest.user_id)
            ).all()
        )
        assert per_user == {user_id: rows // 25 for user_id in expected}  # no row twice
        balances = dict(
            session.execute(
                select(Account.user_id, Account.balance).where(Account.user_id.in_(expected))
            ).all()
        )
        assert balances == expected
        for user_id in expected:
            account_id = session.scalar(select(Account.id).where(Account.user_id == user_id))
            assert_ledger_consistent(session, account_id)


def test_award_retries_through_an_api_restart_and_exits_2_when_nothing_answers(
    stack_without_workers: Stack, stack_factory: Factory, stack_sessions, tmp_path: Path
) -> None:
    stack = stack_without_workers
    caller = stack_factory.caller(Role.MODERATOR)
    users = [stack_factory.user() for _ in range(3)]
    path = tmp_path / "awards.csv"
    path.write_text(
        "".join(f"{u.username},,{n + 1},contest|restart,\n" for n, u in enumerate(users))
    )
    command = [sys.executable, "-m", "cli", "award", str(path), "--key", "restart", "--url",
               stack.base_url]  # fmt: skip
    running = subprocess.Popen(
        command,
        env=os.environ | {"TALLY_TOKEN": caller.token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    with stack_sessions() as session:  # accepted: no worker yet, so award is following it
        while not session.scalar(select(func.count()).where(Batch.tenant_id == caller.tenant_id)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    stack.stop("api")
    time.sleep(1)  # its status polls meet a refused connection and are retried
    stack.start("api", "api", "--bind", stack.base_url.removeprefix("http://"))
    stack.start_worker("worker1")
    out, err = running.communicate(timeout=120)
    assert running.returncode == 0, out + err
    assert "3 rows: 3 new, 0 sent before (not applied again); 3 applied, 0 rejected" in out

    result = subprocess.run(
        [*command[:-1], f"http://127.0.0.1:{free_port()}", "--retry-for", "1"],
        env=os.environ | {"TALLY_TOKEN": caller.token},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3  # unreachable
    assert "could not send rows 1-3" in result.stderr and "ConnectError" in result.stderr
    assert "Traceback" not in result.stderr


def test_award_edited_and_rerun_applies_every_row_exactly_once(
    stack: Stack, stack_factory: Factory, stack_sessions, tmp_path: Path
) -> None:
    """Issue 20, reproduction 4: a refused batch fixed and the file sent again."""
    caller = stack_factory.caller(Role.MODERATOR)
    alice, bob, carol, dave = (stack_factory.user() for _ in range(4))
    path = tmp_path / "awards.csv"

    def write(third: str) -> None:
        path.write_text("username,user_id,variation_points,context,comment\n"
                        f"{alice.username},,7,c,\n{bob.username},,3,c,\n"
                        f"{third},,1,c,\n{carol.username},,2,c,\n")  # fmt: skip

    write("nobody")
    args = ("--key", "fixed", "--batch-size", "2")
    result = _award(stack, caller.token, path, *args)
    assert result.returncode == 1
    assert "row 4 (nobody): username: no such user" in result.stderr  # the header is row 1

    # A dry run of the fixed file says what would happen, and writes nothing.
    write(dave.username)
    with stack_sessions() as session:
        before = session.scalar(select(func.count()).select_from(AdjustmentRequest))
    result = _award(stack, caller.token, path, *args, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run, 4 rows: 2 would be applied, 2 were sent before; nothing was written" in (
        result.stdout
    )
    with stack_sessions() as session:
        assert session.scalar(select(func.count()).select_from(AdjustmentRequest)) == before

    result = _award(stack, caller.token, path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 rows: 2 new, 2 sent before (not applied again); 2 applied, 0 rejected" in (
        result.stdout
    )
    # The same with another batch size: every row is replayed by its own key.
    result = _award(stack, caller.token, path, "--key", "fixed", "--batch-size", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 rows: 0 new, 4 sent before" in result.stdout
    # A row changed after it was applied is refused, not applied a second time.
    path.write_text(path.read_text().replace(f"{alice.username},,7", f"{alice.username},,8"))
    result = _award(stack, caller.token, path, *args)
    assert result.returncode == 1
    assert f"row 2 ({alice.username}): idempotency_key: another request has this key" in (
        result.stderr
    )

    users = {alice.id: 7, bob.id: 3, carol.id: 2, dave.id: 1}
    with stack_sessions() as session:
        balances = dict(
            session.execute(
                select(Account.user_id, Account.balance).where(Account.user_id.in_(users))
            ).all()
        )
        requests = session.scalar(select(func.count()).where(AdjustmentRequest.user_id.in_(users)))
    assert balances == users
    assert requests == 4
