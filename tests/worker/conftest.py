"""Worker fixtures: a Celery app of its own (queue tally-worker-tests, chunks of 100).

worker, apply_account, sessions, factory and moderator come from tests/conftest.py and use
the `celery_app` defined here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Task
from redis import Redis

from shared.platform.config import Settings
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
def relay_outbox(celery_app: TallyCelery) -> Task:
    return celery_app.tasks[RELAY_OUTBOX_TASK]


@pytest.fixture
def redis(celery_app: TallyCelery) -> Redis:
    return celery_app.resources.redis
