"""The completion listener: one subscription per process wakes the requests waiting on it."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import pytest
from redis import ConnectionPool, Redis

from shared.flow.notify import AnnouncementListener, CompletionListener, announce
from shared.platform.config import Settings
from shared.platform.keys import RedisKeys


@pytest.fixture
def redis(base_settings: Settings) -> Iterator[Redis]:
    client = Redis.from_url(base_settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def channel() -> str:
    return RedisKeys(secrets.token_hex(4)).done_channel("tally")


def test_a_waiter_is_woken_by_the_announcement_of_its_request(redis: Redis, channel: str) -> None:
    listener = CompletionListener(lambda: redis, lambda: channel)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(listener.wait(1, timeout=10)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.2)
    announce(redis, channel, [2, 1])
    waiter.join()
    assert results == [True]
    assert time.monotonic() - started < 5  # woken, not timed out


def test_an_announcement_before_the_wait_is_not_missed(redis: Redis, channel: str) -> None:
    listener = CompletionListener(lambda: redis, lambda: channel)
    assert listener.wait(3, timeout=0.1) is False  # starts the subscription
    announce(redis, channel, [4])
    time.sleep(0.2)
    # The request was applied before its thread got round to waiting.
    assert listener.wait(4, timeout=0.1) is True
    # Unless that earlier announcement was not borne out by the database: wait for a new one.
    assert listener.wait(4, timeout=0.1, heard_before=False) is False


def test_another_deployments_announcements_are_not_heard(redis: Redis, channel: str) -> None:
    listener = CompletionListener(lambda: redis, lambda: channel)
    listener.wait(5, timeout=0.1)
    # Another deployment with the same queue name, in this Redis database or another one:
    # pub/sub channels ignore the database number, so the channel carries the deployment.
    other = RedisKeys(secrets.token_hex(4)).done_channel("tally")
    announce(redis, other, [6])
    other_database = _other_database(redis)
    announce(other_database, other, [6])
    other_database.close()
    assert listener.wait(6, timeout=0.5) is False


def test_what_is_not_a_list_of_request_ids_wakes_no_one(redis: Redis, channel: str) -> None:
    listener = CompletionListener(lambda: redis, lambda: channel)
    listener.wait(7, timeout=0.1)
    for junk in ('{"request_id": 8}', '"8"', "[[8]]", '[{"request_id": 8}]', "not json"):
        redis.publish(channel, junk)
    assert listener.wait(8, timeout=0.5) is False
    announce(redis, channel, [8])  # and the listener still works, without a reconnect
    started = time.monotonic()
    assert listener.wait(8, timeout=5) is True
    assert time.monotonic() - started < 0.4


def test_a_listener_keyed_by_tenant_wakes_every_waiter_of_the_tenant(
    redis: Redis, channel: str
) -> None:
    listener = AnnouncementListener(lambda: redis, lambda: channel, str, remember=0)
    with (
        listener.expecting("acme") as first,
        listener.expecting("acme") as second,
        listener.expecting("other") as other,
    ):
        # Announced after registering, before waiting (between a read and its wait).
        redis.publish(channel, '["acme", 7]')
        assert first.wait(5) and second.wait(5)
        assert not other.wait(0.3)
    with listener.expecting("acme") as early:
        with listener.expecting("acme"):
            pass  # another request of the tenant, answered already: `early` still waits
        redis.publish(channel, '["acme"]')
        assert early.wait(5)
    # Nothing is remembered: a wait after the announcement waits for the next one.
    assert listener.wait("acme", timeout=0.3) is False


def _other_database(redis: Redis) -> Redis:
    """A client of another database of the same server (TCP or socket alike)."""
    pool = redis.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["db"] = (int(kwargs.get("db", 0)) + 1) % 16
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))
