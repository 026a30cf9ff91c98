"""How work reaches the workers: pending accounts in one Redis set, drained by one task at a time.

Whoever commits requests (the API, a bulk batch, the outbox relay) calls `notify`
with their accounts after the commit: they join the set `tally:pending:<queue>`, and a drain
task is queued unless the mark `tally:dispatch:<queue>` (taken with SET NX) says one is
queued or running. The drain task keeps the mark while it works: it pops a few
hundred accounts at a time and applies all their pending requests in one
transaction, again and again until the set is empty; then it `release`s the mark.
So a busy system runs one task that applies many accounts per transaction, and the
API pays for a Celery publish only when the workers were idle.

No wakeup is lost. An account added while the task works is popped by it. One
added after the task found the set empty either finds the mark gone and queues a
task itself, or was added before the release looked at the set again, in which
case the task takes the mark back and goes on.

The set is a hint, not the record: the committed rows are. Accounts lost with
Redis (restarted empty, or popped by a worker killed mid-chunk) are found again by
the outbox relay, which queues a drain whatever the mark says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from redis import Redis

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
    """Hands accounts with pending requests to the workers; `send` queues one drain task."""

    def __init__(self, redis: Redis, send: Callable[[], None], queue: str) -> None:
        self.redis = redis
        self.send = send
        # Named after the Celery queue, so deployments that share a Redis keep apart.
        self.pending_key = f"tally:pending:{queue}"
        self.dispatch_key = f"tally:dispatch:{queue}"
        self._notify = redis.register_script(NOTIFY)

    def notify(self, account_ids: Iterable[str], *, force: bool = False) -> bool:
        """Mark these accounts pending and make sure a drain task is queued.

        Call it after the commit. `force` queues a task even if one seems queued (the
        relay's choice: it only runs when something was lost). Returns whether this
        call queued a task.
        """
        ids = list(account_ids)
        last = max(len(ids) - NOTIFY_ACCOUNTS_PER_CALL, 0)
        for start in range(0, last, NOTIFY_ACCOUNTS_PER_CALL):
            end = min(start + NOTIFY_ACCOUNTS_PER_CALL, last)
            self.redis.sadd(self.pending_key, *ids[start:end])
        mode = "force" if force else "nx"
        keys = [self.pending_key, self.dispatch_key]
        if not self._notify(keys, [mode, DISPATCH_TTL_SECONDS, *ids[last:]]):
            return False
        try:
            self.send()
        except Exception:
            # No task is on its way: let the next notify try again.
            self.redis.delete(self.dispatch_key)
            raise
        return True

    def take(self, limit: int = ACCOUNTS_PER_TASK) -> list[str]:
        """For the drain task: pop up to `limit` pending accounts (the mark stays taken)."""
        popped = self.redis.spop(self.pending_key, limit) or []
        return sorted(account.decode() for account in popped)  # type: ignore[union-attr]

    def release(self) -> bool:
        """For the drain task that found the set empty: give up the mark.

        Returns False if accounts arrived meanwhile and the mark was taken back, so
        the caller must go on draining.
        """
        pipeline = self.redis.pipeline(transaction=True)
        pipeline.delete(self.dispatch_key)
        pipeline.scard(self.pending_key)
        if not pipeline.execute()[1]:
            return True
        # A notify in between saw the mark and queued nothing; whoever takes it now drains.
        return not self.redis.set(self.dispatch_key, 1, nx=True, ex=DISPATCH_TTL_SECONDS)

    def requeue(self) -> None:
        """For a drain task out of time: keep the mark and queue the next task."""
        self.redis.set(self.dispatch_key, 1, ex=DISPATCH_TTL_SECONDS)
        self.send()

    def return_accounts(self, account_ids: Iterable[str]) -> None:
        """Put accounts back for the next round (one not fully applied, or failed)."""
        ids = list(account_ids)
        if ids:
            self.redis.sadd(self.pending_key, *ids)

    def backlog(self) -> int:
        """Accounts waiting to be drained."""
        count: int = self.redis.scard(self.pending_key)  # type: ignore[assignment]
        return count
