"""The completion listener: one subscription per process wakes the requests waiting on it."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from shared.config import Settings
from shared.notify import Completion, CompletionListener, announce, done_channel


@pytest.fixture
def redis(base_settings: Settings) -> Iterator[Redis]:
    client = Redis.from_url(base_settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def channel() -> str:
    return done_channel("notify-" + secrets.token_hex(4))


def _done(request_id: int) -> Completion:
    return Completion(request_id, "completed", entry_id=request_id + 1000, balance_after=7,
                      reputed_at="2026-11-30T00:00:00Z")  # fmt: skip


def test_a_waiter_is_woken_by_the_announcement_of_its_request(redis: Redis, channel: str) -> None:
    listener = CompletionListener(lambda: redis, channel)
    results: list[Completion | None] = []
    waiter = threading.Thread(target=lambda: results.append(listener.wait(1, timeout=10)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.2)
    announce(redis, channel, [_done(2), _done(1)])
    waiter.join()
    assert results == [_done(1)]
    assert time.monotonic() - started < 5  # woken, not timed out


def test_an_announcement_before_the_wait_is_not_missed(redis: Redis, channel: str) -> None:
    listener = CompletionListener(lambda: redis, channel)
    assert listener.wait(3, timeout=0.1) is None  # starts the subscription
    announce(redis, channel, [_done(4)])
    time.sleep(0.2)
    # The request was applied before its thread got round to waiting.
    assert listener.wait(4, timeout=0.1) == _done(4)


def test_another_deployments_announcements_are_not_heard(redis: Redis, channel: str) -> None:
    listener = CompletionListener(lambda: redis, channel)
    listener.wait(5, timeout=0.1)
    announce(redis, done_channel("elsewhere-" + secrets.token_hex(4)), [_done(6)])
    assert listener.wait(6, timeout=0.5) is None
