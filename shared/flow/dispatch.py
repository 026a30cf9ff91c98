"""How work reaches the workers: each lane's pending accounts, drained by one task at a time.

Work comes in lanes, each with its own Celery queue and workers, so that one kind
never waits behind another: single adjustments (someone may be waiting for the
201), bulk batches, and the outbox relay. A lane's accounts are spread over
`partitions` by a hash of the account id; bulk uses several, so several drain
tasks apply a large batch at once, never two on one account.

Whoever commits requests (the API, a bulk batch, the outbox relay) calls `notify`
with their accounts after the commit, and a drain task is queued for their partition
unless its mark `tally:<deployment>:dispatch:<queue>:<partition>` (taken with SET NX)
says one is queued or running. The drain task keeps the mark while it works: it takes
a few hundred accounts at a time and applies all their pending requests in one
transaction, again and again until none is left; then it `release`s the mark. So a
busy system runs one task per partition that applies many accounts per transaction.

Where a drain task finds its accounts depends on the lane:

- **In Redis** (`Dispatcher`, the bulk lane): each notify adds its accounts to the
  partition's set `tally:<deployment>:pending:<queue>:<partition>` in the same round
  trip, and the task pops them. An account added while the task works is popped by it;
  one added after the task found the set empty either finds the mark gone and queues a
  task itself, or was added before the release looked at the set again, in which case
  the task takes the mark back and goes on.
- **In PostgreSQL** (`ScanningDispatcher`, the interactive lane, one partition): the
  task asks the database for the accounts of the oldest pending requests (`scan`), so a
  notify carries no accounts and only starts a task. A process asks Redis at most once
  per `QUIET_SECONDS`: a notify within that time of the process's last ask skips, so a
  single adjustment costs the API no round trip to Redis while the workers are busy. No
  wakeup is lost. An ask finds the mark taken (by itself or by another) at a moment
  after it started, so the task that held the mark then releases it later still; a task
  that releases the mark keeps looking in the database for QUIET_SECONDS, its last look
  starting after that, and takes the mark back for what it finds. A skipped notify comes
  after its request's commit and within QUIET_SECONDS of an ask's start, so that last
  look sees the request. If the ask fails, what was skipped meanwhile is left to the
  relay, like what a failed notify leaves.

Either way the committed rows are the record; the sets and the mark are hints. Accounts
lost with Redis (restarted empty, or popped by a worker killed mid-chunk) and a task
lost with its message are found again by the outbox relay, which queues a drain
whatever the mark says.
"""

from __future__ import annotations

import enum
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

from redis import Redis

from shared.platform.keys import RedisKeys


class Lane(enum.StrEnum):
    """A kind of work with its own Celery queue (and, in a deployment, its own workers)."""

    INTERACTIVE = "interactive"  # single adjustments: a client may be waiting for the 201
    BULK = "bulk"  # the items of bulk batches
    RELAY = "relay"  # the outbox relay, run by beat
    EVENTS = "events"  # numbering new events and handing them on, run by beat
    WEBHOOKS = "webhooks"  # webhook deliveries: slow receivers never delay anything else


# A lane's scan of the database: the accounts of up to N of its oldest pending requests,
# leaving out the accounts named.
Scan = Callable[[int, Sequence[str]], list[str]]


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
# How long a process that saw the mark taken skips its notifies of a lane that scans the
# database, and how long a task of such a lane keeps looking after it gives the mark up.
QUIET_SECONDS = 0.05
# How long a drain task leaves an account alone whose apply failed on its own with an
# error that is not transient (a poison request): the others go on meanwhile.
PARK_SECONDS = 60.0


class Dispatcher:
    """Hands a lane's accounts with pending requests to its workers, through a set of
    accounts in Redis per partition (the bulk lane; see ScanningDispatcher for the other).

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
        # Accounts left alone until a time (time.monotonic), by `park`.
        self._parked: dict[str, float] = {}

    def partition_of(self, account_id: str) -> int:
        return zlib.crc32(account_id.encode()) % self.partitions

    def _by_partition(self, account_ids: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = defaultdict(list)
        for account_id in account_ids:
            groups[self.partition_of(account_id)].append(account_id)
        return groups

    def notify(self, account_ids: Iterable[str], *, force: bool = False) -> int:
        """Make sure a drain task is queued for these accounts, which must be committed.

        `force` queues a task even if one seems queued (the relay's choice: it only runs
        when something was lost). Returns how many tasks this call queued.
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
        """For the drain task: up to `limit` pending accounts (the mark stays taken)."""
        popped = self.redis.spop(self.pending_keys[partition], limit) or []
        accounts = {account.decode() for account in popped}  # type: ignore[union-attr]
        # A parked account popped is dropped: the relay hands it over again.
        return sorted(accounts.difference(self._still_parked()))

    def release(self, partition: int) -> bool:
        """For the drain task that found nothing to take: give up the mark.

        Returns False if work arrived meanwhile and the mark was taken back, so the
        caller must go on draining.
        """
        pending_key, dispatch_key = self.pending_keys[partition], self.dispatch_keys[partition]
        pipeline = self.redis.pipeline(transaction=True)
        pipeline.delete(dispatch_key)
        pipeline.scard(pending_key)
        if not pipeline.execute()[1]:
            return True
        # A notify in between saw the mark and queued nothing; whoever takes it now drains.
        return not self._take_back(partition)

    def _take_back(self, partition: int) -> bool:
        return bool(
            self.redis.set(self.dispatch_keys[partition], 1, nx=True, ex=DISPATCH_TTL_SECONDS)
        )

    def park(self, account_id: str) -> None:
        """For the drain task whose apply of this account alone failed for good: leave it
        for PARK_SECONDS. A lane of sets drops it when it is popped or returned, and the
        relay hands it over again; a lane that scans the database skips it in this process."""
        self._parked[account_id] = time.monotonic() + PARK_SECONDS

    def _still_parked(self) -> list[str]:
        now = time.monotonic()
        for account_id in [a for a, until in self._parked.items() if until <= now]:
            del self._parked[account_id]
        return sorted(self._parked)

    def requeue(self, partition: int) -> None:
        """For a drain task out of time: keep the mark and queue the next task."""
        self.redis.set(self.dispatch_keys[partition], 1, ex=DISPATCH_TTL_SECONDS)
        self.send(partition)

    def return_accounts(self, account_ids: Iterable[str]) -> None:
        """Put accounts back for the next round (one not fully applied, or failed)."""
        parked = set(self._still_parked())
        returned = [a for a in account_ids if a not in parked]
        for partition, ids in self._by_partition(returned).items():
            self.redis.sadd(self.pending_keys[partition], *ids)

    def backlog(self) -> int:
        """Accounts waiting in Redis to be drained, over every partition."""
        pipeline = self.redis.pipeline(transaction=False)
        for key in self.pending_keys:
            pipeline.scard(key)
        return sum(int(count) for count in pipeline.execute())


class ScanningDispatcher(Dispatcher):
    """A lane of one partition whose drain tasks find their accounts in PostgreSQL (the
    interactive lane): `scan(limit, parked)` returns the accounts of up to `limit` of its
    oldest pending requests, leaving out `parked`. It keeps no set in Redis, so a notify
    carries no accounts and only makes sure that a task runs (see the module's text).
    """

    def __init__(
        self, redis: Redis, keys: RedisKeys, send: Callable[[int], None], queue: str, scan: Scan
    ) -> None:
        super().__init__(redis, keys, send, queue)
        self.scan = scan
        # Until when (time.monotonic) this process skips notifies: see the module's text.
        self._quiet_until = 0.0

    def notify(self, account_ids: Iterable[str], *, force: bool = False) -> int:
        """Make sure a drain task is queued, unless this process asked within QUIET_SECONDS
        (the requests, which must be committed, are then found by the release's looks)."""
        asked = time.monotonic()
        if not force and asked < self._quiet_until:
            return 0
        # This process's other notifies skip from now (see the module's text).
        self._quiet_until = asked + QUIET_SECONDS
        try:
            return int(self._notify_partition(0, [], force))
        except Exception:
            self._quiet_until = 0.0
            raise

    def take(self, partition: int, limit: int = ACCOUNTS_PER_TASK) -> list[str]:
        """The accounts of up to `limit` of the oldest pending requests, none parked."""
        return self.scan(limit, self._still_parked())

    def release(self, partition: int) -> bool:
        """Give up the mark, then look in the database for QUIET_SECONDS (see the module's
        text); False if work was found and the mark taken back."""
        self.redis.delete(self.dispatch_keys[partition])
        quiet_ends = time.monotonic() + QUIET_SECONDS
        while True:
            # The last look must start after the quiet time: decide before looking.
            last = time.monotonic() >= quiet_ends
            if self.scan(1, self._still_parked()):
                # Work that a skipped notify left to us, unless a new task took the mark.
                return not self._take_back(partition)
            if last:
                return True
            time.sleep(min(GATHER_SECONDS, max(quiet_ends - time.monotonic(), 0)))

    def return_accounts(self, account_ids: Iterable[str]) -> None:
        """Nothing to put back: the database has them, and the next take finds them."""
