"""A real stack for the tests that need processes: the API, two Celery workers, beat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.platform.db import make_session_factory
from tests.conftest import Services
from tests.factories import Factory
from tests.stack import Stack, running_stack


@pytest.fixture
def stack_database(services: Services) -> str:
    """The stack's database: the suite's. A module whose assertions count every request
    the stack's workers apply gives it one of its own (`own_database`)."""
    return services.database_url


@pytest.fixture
def stack_sessions(services: Services, stack_database: str) -> Iterator[sessionmaker[Session]]:
    engine = services.engine(database_url=stack_database)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def stack_factory(stack_sessions: sessionmaker[Session]) -> Factory:
    return Factory(stack_sessions)


@pytest.fixture
def stack_env() -> dict[str, str]:
    """More TALLY_* settings for every process of the stack; a test module may override it."""
    return {}


@pytest.fixture
def stack_without_workers(
    services: Services, stack_database: str, tmp_path: Path, stack_env: dict[str, str]
) -> Iterator[Stack]:
    """The API (two processes) and beat; the test starts workers when it wants them."""
    env = {"TALLY_RELAY_DELAY": "2", "TALLY_RELAY_INTERVAL": "0.5", "TALLY_API_PROCESSES": "2"}
    with running_stack(tmp_path, stack_database, services.redis_url, env | stack_env) as stack:
        yield stack


@pytest.fixture
def stack(stack_without_workers: Stack) -> Stack:
    """The full stack: the API, beat and two Celery worker processes."""
    stack_without_workers.start_worker("worker1")
    stack_without_workers.start_worker("worker2")
    return stack_without_workers
