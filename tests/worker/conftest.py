"""Worker fixtures: the Celery app and its connections on the test services."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from celery import Task
from celery.contrib.testing.worker import start_worker
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.models import Role
from tests.factories import Caller, Factory, apply_now
from worker.app import RELAY_OUTBOX_TASK, TallyCelery, make_celery


@pytest.fixture(scope="session")
def celery_app(base_settings: Settings) -> Iterator[TallyCelery]:
    app = make_celery(
        base_settings.with_overrides({"queue_name": "tally-worker-tests", "apply_chunk": 100})
    )
    app.loader.import_default_modules()
    yield app
    app.resources.close()


@pytest.fixture
def worker(celery_app: TallyCelery) -> Iterator[None]:
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


@pytest.fixture
def apply_account(celery_app: TallyCelery) -> Callable[[str], int]:
    """Apply one account's pending requests now, in the test's thread; how many were applied."""
    return lambda account_id: apply_now(celery_app, [account_id])


@pytest.fixture
def relay_outbox(celery_app: TallyCelery) -> Task:
    return celery_app.tasks[RELAY_OUTBOX_TASK]


@pytest.fixture
def sessions(celery_app: TallyCelery) -> sessionmaker[Session]:
    return celery_app.resources.sessions


@pytest.fixture
def redis(celery_app: TallyCelery) -> Redis:
    return celery_app.resources.redis


@pytest.fixture
def factory(sessions: sessionmaker[Session]) -> Factory:
    return Factory(sessions)


@pytest.fixture
def moderator(factory: Factory) -> Caller:
    return factory.caller(Role.MODERATOR)
