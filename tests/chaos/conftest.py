"""The chaos rig: a throwaway PostgreSQL and Redis, and the whole stack on top of them."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from cli.embedded import free_port
from shared.models import Role
from shared.platform.db import make_engine, make_session_factory
from shared.platform.migrate import upgrade
from tests.chaos.services import ThrowawayPostgres, ThrowawayRedis
from tests.factories import Caller, Factory
from tests.stack import Stack, wait_until_up

LOCK_TTL_SECONDS = 2
RELAY_DELAY_SECONDS = 3
EXPIRY_INTERVAL_SECONDS = 0.5


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
    # How the API and beat were started, to start them again after a kill.
    api_args: tuple[str, ...]
    beat_args: tuple[str, ...]

    def redis_client(self) -> Redis:
        return Redis.from_url(self.redis.url, socket_timeout=2)

    def start_api(self) -> None:
        self.stack.start("api", *self.api_args)

    def start_beat(self) -> None:
        self.stack.start("beat", *self.beat_args)


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

    port = free_port()
    env = os.environ | {
        "TALLY_DATABASE_URL": postgres.url,
        "TALLY_REDIS_URL": redis.url,
        "TALLY_QUEUE_NAME": "chaos-" + secrets.token_hex(3),
        "TALLY_RELAY_DELAY": str(RELAY_DELAY_SECONDS),
        "TALLY_RELAY_INTERVAL": "1",
        "TALLY_LOCK_TTL": str(LOCK_TTL_SECONDS),
        "TALLY_LOCK_WAIT": "1",
        "TALLY_APPLY_CHUNK": "50",
        # Beat asks for due lot expiries and hold timeouts twice a second.
        "TALLY_EXPIRY_INTERVAL": str(EXPIRY_INTERVAL_SECONDS),
    }
    stack = Stack(f"http://127.0.0.1:{port}", env, {}, tmp_path)
    rig = Rig(
        stack,
        postgres,
        redis,
        sessions,
        caller,
        user_ids,
        points_user_ids,
        quiet_user_id,
        api_args=("api", "--bind", f"127.0.0.1:{port}"),
        beat_args=("beat", "--schedule", str(tmp_path / "beat-schedule")),
    )
    rig.start_api()
    rig.start_beat()
    stack.start_worker("worker1")
    stack.start_worker("worker2")
    try:
        wait_until_up(stack)
        yield rig
    finally:
        for name in list(stack.processes):
            stack.stop(name)
