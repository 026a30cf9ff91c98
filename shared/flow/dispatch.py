"""How work reaches the workers: pending accounts in Redis sets, each drained by one task at a time.

Work comes in lanes, each with its own Celery queue and workers, so that one kind
never waits behind another: single adjustments (someone may be waiting for the
201), bulk batches, and the outbox relay. A lane's accounts are spread over
`partitions` by a hash of the account id; bulk uses several, so several drain
tasks apply a large batch at once, never two on one account.

Whoever commits requests (the API, a bulk batch, the outbox relay) calls `notify`
with their accounts after the commit: each joins its partition's set
`tally:<deployment>:pending:<queue>:<partition>`, and a drain task is queued for the
partition unless its mark `tally:<deployment>:dispatch:<queue>:<partition>` (taken with
SET NX) says one
is queued or running. The drain task keeps the mark while it works: it pops a few
hundred accounts at a time and applies all their pending requests in one
transaction, again and again until the set is empty; then it `release`s the mark.
So a busy system runs one task per partition that applies many accounts per
transaction, and the API pays for a Celery publish only when the workers were idle.

No wakeup is lost. An account added while the task works is popped by it. One
added after the task found the set empty either finds the mark gone and queues a
task itself, or was added before the release looked at the set again, in which
case the task takes the mark back and goes on.

The sets are a hint, not the record: the committed rows are. Accounts lost with
Redis (restarted empty, or popped by a worker killed mid-chunk) are found again by
the outbox relay, which queues a drain whatever the mark says.
"""

from __future__ import annotations

import enum
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable

from redis import Redis

from shared.platform.keys import RedisKeys


class Lane(enum.StrEnum):
    """A kind of work with its own Celery queue (and, in a deployment, its own workers)."""

    INTERACTIVE = "interactive"  # single adjustments: a client may be waiting for the 201
    BULK = "bulk"  # the items of bulk batches
    RELAY = "relay"  # the outbox relay, run by beat
    EVENTS = "events"  # numbering new events and handing them on, run by beat
    WEBHOOKS = "webhooks"  # webhook deliveries: slow receivers never delay anything else


def queue_of(base: str, lane: Lane) -> str:
    """The Celery queue of a lane: `tally`, `tally.bulk`, `tally.relay` for base `tally`."""
    return base if lane is Lane.INTERACTIVE else f"{base}.{lane}"


# The mark outlives any sane queue wait and any one drain task (they re-queue themselves
# after DRAIN_SECONDS); if its task is lost, the relay queues another.
DISPATCH_TTL_SECONDS = 60
# How long one drain task works before it queues its successor (a stopping worker stops).
DRAIN_SECONDS = 1.0
# Add the accounts (ARGV[3..]) to the pending set; take the mark (SET NX unless ARGV[1] is
# "force") with ARGV[2] seconds to live; return whether it was taken. One round trip,
# a third cheaper in the API's CPU than a pipeline of SADD and SET.
NOTIFY = """
if #ARGV > 2 then redis.call('sadd', KEYS[1], unpack(ARGV, 3)) end
if ARGV[1] == 'force' then
    redis.call('set', KEYS[2], 1, 'EX', ARGV[2])
    return 1
end
if redis.call('set', KEYS[2], 1, 'NX', 'EX', ARGV[2]) then return 1 end
return 0
"""
# Lua's unpack() takes some thousands of values at most: larger notifies add the rest first.
NOTIFY_ACCOUNTS_PER_CALL = 1000
# How long a drain task lets requests gather before each take.
GATHER_SECONDS = 0.004
# How many accounts one drain task takes at most.
ACCOUNTS_PER_TASK = 500


class Dispatcher:
    """Hands a lane's accounts with pending requests to its workers.

    `send(partition)` queues one drain task for that partition.
    """

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        send: Callable[[int], None],
        queue: str,
        partitions: int = 1,
    ) -> None:
        self.redis = redis
        self.send = send
        self.partitions = partitions
        self.pending_keys = [keys.pending(queue, p) for p in range(partitions)]
        self.dispatch_keys = [keys.dispatch_mark(queue, p) for p in range(partitions)]
        self._notify = redis.register_script(NOTIFY)

    def partition_of(self, account_id: str) -> int:
        return zlib.crc32(account_id.encode()) % self.partitions

    def _by_partition(self, account_ids: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = defaultdict(list)
        for account_id in account_ids:
            groups[self.partition_of(account_id)].append(account_id)
        return groups

    def notify(self, account_ids: Iterable[str], *, force: bool = False) -> int:
        """Mark these accounts pending and make sure a drain task is queued for each.

        Call it after the commit. `force` queues a task even if one seems queued (the
        relay's choice: it only runs when something was lost). Returns how many tasks
        this call queued.
        """
        return sum(
            self._notify_partition(partition, ids, force)
            for partition, ids in self._by_partition(account_ids).items()
        )

    def _notify_partition(self, partition: int, ids: list[str], force: bool) -> bool:
        pending_key, dispatch_key = self.pending_keys[partition], self.dispatch_keys[partition]
        last = max(len(ids) - NOTIFY_ACCOUNTS_PER_CALL, 0)
        for start in range(0, last, NOTIFY_ACCOUNTS_PER_CALL):
            end = min(start + NOTIFY_ACCOUNTS_PER_CALL, last)
            self.redis.sadd(pending_key, *ids[start:end])
        mode = "force" if force else "nx"
        if not self._notify([pending_key, dispatch_key], [mode, DISPATCH_TTL_SECONDS, *ids[last:]]):
            return False
        try:
            self.send(partition)
        except Exception:
            # No task is on its way: let the next notify try again.
            self.redis.delete(dispatch_key)
            raise
        return True

    def take(self, partition: int, limit: int = ACCOUNTS_PER_TASK) -> list[str]:
        """For the drain task: pop up to `limit` pending accounts (the mark stays taken)."""
        popped = self.redis.spop(self.pending_keys[partition], limit) or []
        return sorted(account.decode() for account in popped)  # type: ignore[union-attr]

    def release(self, partition: int) -> bool:
        """For the drain task that found its set empty: give up the mark.

        Returns False if accounts arrived meanwhile and the mark was taken back, so
        the caller must go on draining.
        """
        pending_key, dispatch_key = self.pending_keys[partition], self.dispatch_keys[partition]
        pipeline = self.redis.pipeline(transaction=True)
        pipeline.delete(dispatch_key)
        pipeline.scard(pending_key)
        if not pipeline.execute()[1]:
            return True
        # A notify in between saw the mark and queued nothing; whoever takes it now drains.
        return not self.redis.set(dispatch_key, 1, nx=True, ex=DISPATCH_TTL_SECONDS)

    def requeue(self, partition: int) -> None:
        """For a drain task out of time: keep the mark and queue the next task."""
        self.redis.set(self.dispatch_keys[partition], 1, ex=DISPATCH_TTL_SECONDS)
        self.send(partition)

    def return_accounts(self, account_ids: Iterable[str]) -> None:
        """Put accounts back for the next round (one not fully applied, or failed)."""
        for partition, ids in self._by_partition(account_ids).items():
            self.redis.sadd(self.pending_keys[partition], *ids)

    def backlog(self) -> int:
        """Accounts waiting to be drained, over every partition."""
        pipeline = self.redis.pipeline(transaction=False)
        for key in self.pending_keys:
            pipeline.scard(key)
        return sum(int(count) for count in pipeline.execute())
