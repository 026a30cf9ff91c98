"""Completion announcements over Redis pub/sub, so a waiting API call returns at once."""

from __future__ import annotations

import time
from collections.abc import Iterable

from redis import Redis

DONE_CHANNEL_PREFIX = "tally:done:"


def done_channel(request_id: int) -> str:
    return f"{DONE_CHANNEL_PREFIX}{request_id}"


def announce(redis: Redis, request_ids: Iterable[int]) -> None:
    """Tell waiters that these requests reached a final status (after the commit)."""
    pipeline = redis.pipeline(transaction=False)
    for request_id in request_ids:
        pipeline.publish(done_channel(request_id), b"done")
    pipeline.execute()


class CompletionWaiter:
    """Subscribe first, then check the database, then wait: no announcement is missed."""

    def __init__(self, redis: Redis, request_id: int) -> None:
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._channel = done_channel(request_id)

    def __enter__(self) -> CompletionWaiter:
        self._pubsub.subscribe(self._channel)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pubsub.close()

    def wait(self, timeout: float) -> bool:
        """Block until the announcement arrives (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if self._pubsub.get_message(timeout=remaining) is not None:
                return True
        return False
