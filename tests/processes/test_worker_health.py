"""A worker's /healthz proves its broker connection: 503 while the broker is down, 200
once the worker has connected again (the compose health check asks it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from tests.chaos.services import ThrowawayRedis
from tests.conftest import Services
from tests.stack import Stack

pytestmark = pytest.mark.processes


def health(url: str, wanted: int, timeout: float = 60) -> str:
    """The /healthz answer once it has the status `wanted`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = requests.get(url, timeout=10)
            if answer.status_code == wanted:
                return answer.text
            seen = f"{answer.status_code} {answer.text}"
        except requests.ConnectionError as error:
            seen = str(error)
        assert time.monotonic() < deadline, f"never {wanted}: last {seen}"
        time.sleep(0.2)


def test_healthz_follows_the_broker_connection(services: Services, tmp_path: Path) -> None:
    broker = ThrowawayRedis(tmp_path)
    broker.start()
    env = os.environ | {"TALLY_DATABASE_URL": services.database_url, "TALLY_REDIS_URL": broker.url}
    stack = Stack("http://127.0.0.1:1", env, {}, tmp_path)
    stack.start_worker("worker", "interactive")
    url = stack.worker_metrics["worker"].replace("/metrics", "/healthz")
    try:
        assert health(url, 200) == "ok\n"
        broker.kill()
        assert "broker" in health(url, 503, timeout=15)
        broker.start()
        assert health(url, 200) == "ok\n"
        # The metrics are still served beside it.
        assert "tally_group_processes" in requests.get(stack.worker_metrics["worker"]).text
    finally:
        stack.stop("worker")
        broker.kill()
