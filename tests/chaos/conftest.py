"""The chaos rig: a throwaway PostgreSQL and Redis, and the whole stack on top of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Role
from shared.platform.db import make_engine, make_session_factory
from shared.platform.migrate import upgrade
from tests.chaos.services import ThrowawayPostgres, ThrowawayRedis
from tests.factories import Caller, Factory
from tests.stack import Stack, running_stack

LOCK_TTL_SECONDS = 2
RELAY_DELAY_SECONDS = 3
EXPIRY_INTERVAL_SECONDS = 0.5
# The stack's settings under chaos (the HA suite's too): short timers, so that a fault's
# consequences (an expired lock, a lost dispatch) happen within a scenario.
STACK_ENV = {
    "TALLY_RELAY_DELAY": str(RELAY_DELAY_SECONDS),
    "TALLY_RELAY_INTERVAL": "1",
    "TALLY_LOCK_TTL": str(LOCK_TTL_SECONDS),
    "TALLY_LOCK_WAIT": "1",
    "TALLY_APPLY_CHUNK": "50",
    # Beat asks for due lot expiries and hold timeouts twice a second.
    "TALLY_EXPIRY_INTERVAL": str(EXPIRY_INTERVAL_SECONDS),
}


@dataclass
class Rig:
    stack: Stack
    postgres: ThrowawayPostgres
    redis: ThrowawayRedis
    sessions: sessionmaker[Session]
    caller: Caller
    user_ids: list[int]
    # Users of the "points" load (holds, expiring points), apart from the reputation load's.
    points_user_ids: list[int]
    # A user no load touches: a probe's account that only the relay can hand over.
    quiet_user_id: int

    def redis_client(self) -> Redis:
        return Redis.from_url(self.redis.url, socket_timeout=2)


@dataclass
class Servers:
    """A throwaway PostgreSQL, migrated, with sessions on it, and a throwaway Redis."""

    postgres: ThrowawayPostgres
    redis: ThrowawayRedis
    sessions: sessionmaker[Session]


@contextmanager
def throwaway_servers(tmp_path: Path) -> Iterator[Servers]:
    """Servers a scenario may stop, crash or wipe; gone afterwards."""
    postgres = ThrowawayPostgres(tmp_path / "pg")
    redis = ThrowawayRedis(tmp_path)
    postgres.start()
    redis.start()
    upgrade(postgres.url)
    engine = make_engine(postgres.url)
    try:
        yield Servers(postgres, redis, make_session_factory(engine))
    finally:
        engine.dispose()
        redis.kill()
        postgres.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with throwaway_servers(tmp_path) as servers:
        yield from _rig(tmp_path, servers)


def _rig(tmp_path: Path, servers: Servers) -> Iterator[Rig]:
    postgres, redis, sessions = servers.postgres, servers.redis, servers.sessions
    factory = Factory(sessions)
    caller = factory.caller(Role.MODERATOR)
    user_ids = [factory.user().id for _ in range(12)]
    points_user_ids = [factory.user().id for _ in range(6)]
    quiet_user_id = factory.user().id

    workers = ("worker1", "worker2")
    with running_stack(tmp_path, postgres.url, redis.url, STACK_ENV, workers) as stack:
        yield Rig(stack, postgres, redis, sessions, caller, user_ids, points_user_ids,
                  quiet_user_id)  # fmt: skip
