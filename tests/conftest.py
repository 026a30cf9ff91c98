"""Test services: real PostgreSQL and Redis, from TALLY_TEST_* URLs or embedded ones.

TALLY_TEST_DATABASE_URL names a server (any database on it); the suite creates a
fresh database there, migrates it once and drops it at the end. TALLY_TEST_REDIS_URL
names a Redis database that the suite flushes. Without them the embedded servers
start. With CI=true an unreachable server fails the run instead of falling back.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from redis import Redis
from sqlalchemy.engine import make_url

from shared.config import Settings
from shared.migrate import upgrade


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str


def _reachable_or_fail(name: str, check: object) -> None:
    try:
        check()  # type: ignore[operator]
    except Exception as error:
        pytest.exit(f"{name} is unreachable: {error}", returncode=3)


def _create_database(server_url: str) -> tuple[str, str]:
    """Create a fresh database on the server; return (its URL, libpq URL of the server)."""
    url = make_url(server_url)
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"tally_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    test_url = url.set(drivername="postgresql+psycopg", database=name)
    return test_url.render_as_string(hide_password=False), name


def _drop_database(server_url: str, name: str) -> None:
    libpq = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    database_server = os.environ.get("TALLY_TEST_DATABASE_URL")
    redis_url = os.environ.get("TALLY_TEST_REDIS_URL")
    with ExitStack() as stack:
        if not database_server or not redis_url:
            if os.environ.get("CI") == "true":
                pytest.exit("CI=true needs TALLY_TEST_DATABASE_URL and TALLY_TEST_REDIS_URL", 3)
            from cli.embedded import embedded_postgres, embedded_redis

            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tally-test-")))
            database_server = database_server or stack.enter_context(
                embedded_postgres(folder / "postgres", database="postgres")
            )
            redis_url = redis_url or stack.enter_context(embedded_redis(folder / "redis"))
        redis = Redis.from_url(redis_url, socket_connect_timeout=5)
        _reachable_or_fail(f"Redis at {redis_url}", redis.ping)
        redis.flushdb()
        try:
            database_url, name = _create_database(database_server)
        except psycopg.OperationalError as error:
            pytest.exit(f"PostgreSQL at {database_server} is unreachable: {error}", returncode=3)
        stack.callback(_drop_database, database_server, name)
        upgrade(database_url)
        yield Services(database_url=database_url, redis_url=redis_url)
        redis.flushdb()
        redis.close()


@pytest.fixture
def own_database(services: Services) -> Iterator[str]:
    """A migrated database of this test's own, on the suite's server (for global counts)."""
    url, name = _create_database(services.database_url)
    upgrade(url)
    yield url
    _drop_database(services.database_url, name)


@pytest.fixture(scope="session")
def base_settings(services: Services) -> Settings:
    return Settings(
        database_url=services.database_url,
        redis_url=services.redis_url,
        default_wait=5.0,
        relay_delay=1.0,
        relay_interval=0.5,
        lock_ttl=10.0,
        lock_wait=5.0,
        # The suite's many 401s come from one address; tests of the limits set their own.
        auth_failure_limit="100000/minute",
        rate_limit="100000/second",
    )
