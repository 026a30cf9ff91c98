"""The connections one process needs, built lazily from Settings (after any fork)."""

from __future__ import annotations

import os
from functools import cached_property

from redis import Redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.platform.config import Settings
from shared.platform.db import make_engine, make_session_factory
from shared.platform.keys import RedisKeys
from shared.platform.replicas import ReadReplicas
from shared.platform.replication import ReplicationWatch

# Made by migration 0008; read once per process, on first use.
DEPLOYMENT_ID = text("SELECT id FROM deployment")

REDIS_TIMEOUT = 5.0


class Resources:
    """Database engine, session factory and Redis client of this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pid = os.getpid()

    @cached_property
    def engine(self) -> Engine:
        return self._engine_on(self.settings.database_url)

    def _engine_on(self, database_url: str) -> Engine:
        """An engine on this server (the primary, or a read replica) with the process's
        pool settings."""
        return make_engine(
            database_url,
            pool_size=self.settings.pool_size,
            pool_timeout=self.settings.db_pool_timeout,
            pre_ping=False,
            prepared_statements=self.settings.database_prepared_statements,
        )

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def redis(self) -> Redis:
        return self.settings.redis.client(
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            health_check_interval=30,
        )

    @cached_property
    def replication(self) -> ReplicationWatch:
        return ReplicationWatch(self.engine, self.settings.replication)

    @cached_property
    def read_replicas(self) -> ReadReplicas | None:
        """Where the read routes read (None: no replica configured, the primary)."""
        if not self.settings.read_database_urls:
            return None
        replicas = [self._engine_on(url) for url in self.settings.read_database_urls]
        return ReadReplicas(self.engine, replicas, self.settings.read_max_lag)

    @cached_property
    def keys(self) -> RedisKeys:
        """This deployment's Redis key and channel names (its id is in the database)."""
        with self.engine.connect() as connection:
            return RedisKeys(connection.execute(DEPLOYMENT_ID).scalar_one())

    def _engines(self) -> list[Engine]:
        """The engines built so far."""
        engines = [self.engine] if "engine" in self.__dict__ else []
        replicas: ReadReplicas | None = self.__dict__.get("read_replicas")
        return engines + (replicas.replicas if replicas else [])

    def after_fork(self) -> None:
        """Drop the parent's pooled connections without closing them (SQLAlchemy's advice)."""
        if os.getpid() != self._pid:
            for engine in self._engines():
                engine.dispose(close=False)
        self._pid = os.getpid()

    def close(self) -> None:
        for engine in self._engines():
            engine.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
