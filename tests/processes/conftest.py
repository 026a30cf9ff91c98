"""A real stack for the tests that need processes: gunicorn, two Celery workers, beat."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy.orm import Session, sessionmaker

from cli.embedded import free_port
from shared.db import make_engine, make_session_factory
from tests.conftest import Services
from tests.factories import Factory

STARTUP_TIMEOUT = 60.0


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]]
    log_dir: Path

    def start(self, name: str, *args: str) -> None:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "cli", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def start_worker(self, name: str) -> None:
        self.start(
            name,
            "worker",
            "--concurrency",
            "1",
            "--hostname",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


@pytest.fixture
def stack_sessions(services: Services) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(services.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def stack_factory(stack_sessions: sessionmaker[Session]) -> Factory:
    return Factory(stack_sessions)


def _wait_until_up(stack: Stack) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{stack.logs()}")
        try:
            if requests.get(stack.base_url + "/healthz", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API did not come up:\n{stack.logs()}")


@pytest.fixture
def stack_without_workers(services: Services, tmp_path: Path) -> Iterator[Stack]:
    """gunicorn (two processes) and beat; the test starts workers when it wants them."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = os.environ | {
        "TALLY_DATABASE_URL": services.database_url,
        "TALLY_REDIS_URL": services.redis_url,
        "TALLY_QUEUE_NAME": "tally-stack-" + secrets.token_hex(4),
        "TALLY_RELAY_DELAY": "2",
        "TALLY_RELAY_INTERVAL": "0.5",
        "TALLY_API_PROCESSES": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    stack = Stack(f"http://127.0.0.1:{port}", env, {}, tmp_path)
    stack.start("api", "api", "--bind", f"127.0.0.1:{port}")
    stack.start("beat", "beat", "--schedule", str(tmp_path / "beat-schedule"))
    try:
        _wait_until_up(stack)
        yield stack
    finally:
        for name in list(stack.processes):
            stack.stop(name)


@pytest.fixture
def stack(stack_without_workers: Stack) -> Stack:
    """The full stack: the API, beat and two Celery worker processes."""
    stack_without_workers.start_worker("worker1")
    stack_without_workers.start_worker("worker2")
    return stack_without_workers
