"""`tally status` exits 0 only when every lane has a worker and nothing pending is too old."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.embedded import free_port
from cli.main import cli
from shared.flow.dispatch import Lane
from shared.platform.db import make_engine, make_session_factory, transaction
from tests.conftest import Services
from tests.factories import Factory, queue_requests
from tests.stack import Stack

LANES = [lane.value for lane in Lane]


@pytest.fixture
def env(own_database: str, services: Services) -> dict[str, str]:
    """A database of its own (the outbox counts every tenant) and a queue nobody else uses."""
    return {
        "TALLY_DATABASE_URL": own_database,
        "TALLY_REDIS_URL": services.redis_url,
        "TALLY_QUEUE_NAME": "tally-status-" + secrets.token_hex(4),
    }


def status(env: dict[str, str], *args: str) -> tuple[int, dict]:
    result = CliRunner(env=env).invoke(cli, ["status", "--json", *args], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


def test_no_worker_and_an_old_pending_request_are_each_a_problem(env: dict[str, str]) -> None:
    engine = make_engine(env["TALLY_DATABASE_URL"])
    sessions = make_session_factory(engine)
    factory = Factory(sessions)
    queue_requests(sessions, factory.caller(), factory.user().id, [5])
    with transaction(sessions) as session:
        session.execute(
            text("UPDATE adjustment_requests SET created_at = now() - interval '10 min'")
        )
    engine.dispose()

    code, report = status(env)
    assert code == 1
    assert report["outbox_pending"] == 1 and report["oldest_pending_seconds"] >= 600
    assert report["problems"] == [
        f"the oldest pending request is {report['oldest_pending_seconds']:.0f} s old "
        "(more than 120 s)",
        *(f"no worker consumes the {lane} lane" for lane in LANES),
    ]
    code, report = status(env, "--max-pending-age", "3600")
    assert code == 1
    assert report["problems"] == [f"no worker consumes the {lane} lane" for lane in LANES]


@pytest.mark.processes
def test_healthy_once_every_lane_has_a_worker_and_unhealthy_when_one_lane_loses_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    stack = Stack("", os.environ | env, {}, tmp_path)
    stack.start_worker("front", "interactive,relay")
    stack.start_worker("back", "bulk,events,webhooks")
    try:
        deadline = time.monotonic() + 60
        while (answer := status(env))[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        code, report = answer
        assert code == 0, (report, stack.logs())
        assert report["problems"] == []
        front, back = (f"{name}@{os.uname().nodename}" for name in ("front", "back"))
        assert report["lanes"] == {
            "interactive": [front], "bulk": [back], "relay": [front], "events": [back],
            "webhooks": [back],
        }  # fmt: skip
        stack.stop("back")
        code, report = status(env)
        assert code == 1
        assert report["problems"] == [
            "no worker consumes the bulk lane",
            "no worker consumes the events lane",
            "no worker consumes the webhooks lane",
        ]
    finally:
        stack.stop_all()


def test_an_unreachable_database_exits_3_naming_its_url(env: dict[str, str]) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    result = CliRunner(env=env | {"TALLY_DATABASE_URL": url}).invoke(
        cli, ["status"], catch_exceptions=False
    )
    assert result.exit_code == 3
    assert f"cannot check: could not reach the database at {url}" in result.stderr
