"""Test services: real PostgreSQL and Redis, from TALLY_TEST_* URLs or embedded ones.

TALLY_TEST_DATABASE_URL names a server (any database on it); the suite creates a
fresh database there, migrates it once and drops it at the end. TALLY_TEST_REDIS_URL
names a Redis database that the suite flushes (and the one below it, for tests of two
deployments on one server). Without them the embedded servers start. With CI=true an
unreachable server fails the run instead of falling back. With TALLY_TEST_PGBOUNCER=1
the tests reach that database through PgBouncer in transaction pooling mode
(tests/pgbouncer.py).

Under pytest-xdist (`make test` runs `-n 2`) each worker process is a suite of its own:
its own database on the server and, by its index k, the two Redis databases 2k below
the URL's (modulo 16: up to eight processes), flushed likewise. Below, not above: a
developer's Redis keeps its data in the low numbers, and CI names 15.

The fixtures at the bottom (worker, apply_account, sessions, factory, moderator) are
shared by the packages that define a `celery_app` fixture (tests/api: the Flask app's;
tests/worker: one of its own); each resolves the `celery_app` of the test's package.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from celery.contrib.testing.worker import start_worker
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Role
from shared.platform.config import Settings
from shared.platform.db import make_engine
from shared.platform.migrate import upgrade
from tests.factories import Caller, Factory, apply_now
from worker.app import TallyCelery

# The `tally` commands a test invokes in this process read no `.tally/env` (a `make run`
# in the checkout would write one): they use the URLs the test gives them.
os.environ["TALLY_ENV_FILE"] = os.devnull


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    # Another Redis database on the same server, the suite's too.
    spare_redis_url: str
    # False when database_url goes through a transaction-mode PgBouncer.
    prepared_statements: bool = True

    def engine(self, pool_size: int = 5, database_url: str | None = None) -> Engine:
        """An engine of the test's own on the suite's database (or on `database_url`, on
        the same server), with the suite's choice of prepared statements."""
        return make_engine(
            database_url or self.database_url,
            pool_size=pool_size,
            prepared_statements=self.prepared_statements,
        )


def _reachable_or_fail(name: str, check: object) -> None:
    try:
        check()  # type: ignore[operator]
    except Exception as error:
        pytest.exit(f"{name} is unreachable: {error}", returncode=3)


def redis_database(url: str, offset: int) -> str:
    """The Redis database `offset` from the URL's (negative: below it), on the same
    server (modulo 16; a redis:// path or a unix:// `db` query)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(item.split("=", 1) for item in parts.query.split("&") if item)
        query["db"] = str((int(query.get("db", "0")) + offset) % 16)
        return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))
    database = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(database + offset) % 16}"))


def _xdist_worker() -> int:
    """This process's index among pytest-xdist's workers (0 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def _create_database(server_url: str, prefix: str = "tally_test") -> tuple[str, str]:
    """Create a fresh, empty database on the server; return (its URL, its name)."""
    url = make_url(server_url)
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
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
        redis_url = redis_database(redis_url, -2 * _xdist_worker())
        spare_redis_url = redis_database(redis_url, -1)
        redis = stack.enter_context(Redis.from_url(redis_url, socket_connect_timeout=5))
        _reachable_or_fail(f"Redis at {redis_url}", redis.ping)
        redis.flushdb()
        spare = stack.enter_context(Redis.from_url(spare_redis_url))
        spare.flushdb()
        try:
            database_url, name = _create_database(database_server)
        except psycopg.OperationalError as error:
            pytest.exit(f"PostgreSQL at {database_server} is unreachable: {error}", returncode=3)
        stack.callback(_drop_database, database_server, name)
        prepared_statements = True
        if os.environ.get("TALLY_TEST_PGBOUNCER"):
            from tests.pgbouncer import pgbouncer

            database_url = stack.enter_context(pgbouncer(database_url))
            prepared_statements = False
        upgrade(database_url)
        yield Services(database_url, redis_url, spare_redis_url, prepared_statements)
        redis.flushdb()
        spare.flushdb()


@pytest.fixture
def own_database(services: Services) -> Iterator[str]:
    """A migrated database of this test's own, on the suite's server (for global counts)."""
    url, name = _create_database(services.database_url)
    upgrade(url)
    yield url
    _drop_database(services.database_url, name)


@pytest.fixture(scope="session")
def suite_engine(services: Services) -> Iterator[Engine]:
    """A small engine on the suite's database, for tests that need no app."""
    engine = services.engine(pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def scratch_session(suite_engine: Engine) -> Iterator[Session]:
    """A session on the suite's database in one transaction, rolled back at the end.

    What a test writes there (say, pending requests) never reaches other tests or the relay.
    """
    with Session(suite_engine) as session:
        session.begin()
        try:
            yield session
        finally:
            session.rollback()


@pytest.fixture(scope="session")
def base_settings(services: Services) -> Settings:
    return Settings(
        database_url=services.database_url,
        database_prepared_statements=services.prepared_statements,
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


# Fixtures over the `celery_app` of the test's package (tests/api, tests/worker).


@pytest.fixture
def worker(celery_app: TallyCelery) -> Iterator[None]:
    """A real Celery worker consuming the test queue, in a thread of this process."""
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


@pytest.fixture
def apply_account(celery_app: TallyCelery) -> Callable[[str], int]:
    """Apply one account's pending requests now, in the test's thread; how many were applied."""
    return lambda account_id: apply_now(celery_app, [account_id])


@pytest.fixture
def sessions(celery_app: TallyCelery) -> sessionmaker[Session]:
    return celery_app.resources.sessions


@pytest.fixture
def factory(sessions: sessionmaker[Session]) -> Factory:
    return Factory(sessions)


@pytest.fixture
def moderator(factory: Factory) -> Caller:
    return factory.caller(Role.MODERATOR)
