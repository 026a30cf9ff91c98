"""Per-account Redis locks, many taken in one round trip: each a key with a TTL and a token.

redis-py's Lock holds one key per round trip; a batch chunk covers hundreds of
accounts, so these are taken all-or-nothing with one pipelined SET NX PX, and
released with one pipelined compare-and-delete (only a key still holding our
token is deleted). Taking all or none means two holders of overlapping accounts
never wait on each other while holding some: no deadlock.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Sequence

from redis import Redis

RETRY_SECONDS = 0.01

# Delete the key only if it still holds our token (it may have expired and been retaken).
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class AccountLocks:
    """The Redis locks of a set of accounts (their keys, see RedisKeys.locks), held together."""

    def __init__(self, redis: Redis, keys: Sequence[str], ttl: float) -> None:
        self.redis = redis
        self.keys = list(keys)
        self.ttl_ms = int(ttl * 1000)
        self.token = secrets.token_hex(16)
        self._release = redis.register_script(RELEASE)

    def acquire(self, wait: float) -> bool:
        """Take every lock, retrying for up to `wait` seconds; True once all are held."""
        deadline = time.monotonic() + wait
        while True:
            pipeline = self.redis.pipeline(transaction=False)
            for key in self.keys:
                pipeline.set(key, self.token, nx=True, px=self.ttl_ms)
            if all(pipeline.execute()):
                return True
            self.release()  # all or none: never hold some while waiting for others
            if time.monotonic() >= deadline:
                return False
            time.sleep(RETRY_SECONDS * (1 + random.random()))

    def release(self) -> int:
        """Release the locks still ours; return how many had expired or been retaken."""
        pipeline = self.redis.pipeline(transaction=False)
        for key in self.keys:
            self._release(keys=[key], args=[self.token], client=pipeline)
        return sum(1 for released in pipeline.execute() if not released)
