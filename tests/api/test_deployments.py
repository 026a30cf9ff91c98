"""Two deployments sharing one Redis server never answer each other's waiters, and no
message on Redis decides an answer (issue 20, reproduction 3).

Each deployment has a database of its own (so its own deployment id, and request ids
that start at 1 in both) and either its own Redis database with the same queue name
(staging on one database, production on another: pub/sub ignores the database
number), or the same Redis database with another queue name.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from flask import Flask
from sqlalchemy import text

from shared.models import Role
from shared.platform.config import Settings
from shared.platform.migrate import upgrade
from tests.conftest import Services, _create_database, _drop_database
from tests.factories import Caller, Factory, apply_now
from worker.app import TallyCelery


@dataclass
class Deployment:
    app: Flask
    celery: TallyCelery
    caller: Caller
    username: str
    factory: Factory

    def post(self, key: str, wait: int, **body: Any) -> Any:
        return self.app.test_client().post(
            "/api/v2/score/",
            json={"username": self.username, "score": 5, "reputation_context": "c"} | body,
            headers=self.caller.headers | {"Idempotency-Key": key, "Prefer": f"wait={wait}"},
        )


@pytest.fixture
def deploy(
    services: Services, base_settings: Settings, app_with: Callable[..., Flask]
) -> Iterator[Callable[..., Deployment]]:
    names: list[str] = []

    def make(**overrides: object) -> Deployment:
        url, name = _create_database(services.database_url, prefix="deploy")
        names.append(name)
        upgrade(url)
        app = app_with(database_url=url, **overrides)
        celery: TallyCelery = app.extensions["tally"]
        factory = Factory(celery.resources.sessions)
        caller = factory.caller(Role.MODERATOR)
        return Deployment(app, celery, caller, factory.user().username, factory)

    yield make
    for name in names:
        _drop_database(services.database_url, name)


SHARING = {
    "two-redis-databases-one-queue-name": lambda services: {"redis_url": services.spare_redis_url},
    "one-redis-database-two-queue-names": lambda _: {"queue_name": "tally-other"},
}


@pytest.mark.parametrize("sharing", list(SHARING))
def test_neither_deployment_answers_the_others_waiters(
    deploy: Callable[..., Deployment], services: Services, sharing: str
) -> None:
    mine = deploy()
    theirs = deploy(**SHARING[sharing](services))
    assert mine.celery.resources.keys != theirs.celery.resources.keys

    # Mine has no worker: its request 1 stays queued while theirs applies its requests
    # 1, 2, 3 and announces them.
    answers: list[Any] = []
    waiting = threading.Thread(target=lambda: answers.append(mine.post("mine-1", wait=3)))
    started = time.monotonic()
    waiting.start()
    time.sleep(0.3)
    with start_worker(theirs.celery, pool="solo", perform_ping_check=False):
        for n in range(3):
            assert theirs.post(f"theirs-{n}", wait=10).status_code == 201
    waiting.join()

    (answer,) = answers
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["id"] == 1 and answer.get_json()["status"] == "queued"
    assert time.monotonic() - started >= 2.9  # it waited its whole time: nothing woke it


def test_an_announcement_only_wakes_a_waiter_the_database_answers(
    deploy: Callable[..., Deployment],
) -> None:
    mine = deploy()
    mine.post("first", wait=0)  # request 1, and the account
    with mine.celery.resources.sessions.begin() as session:
        session.execute(text("UPDATE accounts SET status = 'frozen'"))
        (account_id,) = session.execute(text("SELECT id FROM accounts")).scalars()
    resources = mine.celery.resources
    channel = resources.keys.done_channel(resources.settings.queue_name)

    def forge_then_apply() -> None:
        # Request 2 "completed", with a made-up entry and balance, as the forger
        # sent it; then the worker rejects it (the account is frozen).
        time.sleep(0.5)
        forged = [{"request_id": 2, "status": "completed", "entry_id": 1,
                   "balance_after": 999999}]  # fmt: skip
        resources.redis.publish(channel, json.dumps(forged))
        resources.redis.publish(channel, json.dumps([2]))  # and the real shape
        time.sleep(0.5)
        apply_now(mine.celery, [account_id])

    forger = threading.Thread(target=forge_then_apply)
    forger.start()
    answer = mine.post("second", wait=10, score=7)
    forger.join()
    assert answer.status_code == 409, answer.get_json()
    assert answer.get_json()["code"] == "account_frozen"
