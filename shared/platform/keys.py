"""The names of a deployment's Redis keys and channels, every one under `tally:<deployment>`.

The deployment's id is made by migration 0008 and kept in its database, so two
deployments that share a Redis server (a database each, or one database and two queue
names) never read each other's pending sets, locks, rate limits or announcements;
Redis pub/sub ignores the database number, so a channel named by the queue alone was
heard by every deployment on the server. Celery's own queues are named by
TALLY_QUEUE_NAME: deployments sharing one Redis database need different queue names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """Key and channel names under one deployment's prefix."""

    deployment: str

    @property
    def prefix(self) -> str:
        return f"tally:{self.deployment}"

    def lock(self, account_id: str) -> str:
        return f"{self.prefix}:lock:account:{account_id}"

    def locks(self, account_ids: Iterable[str]) -> list[str]:
        """The lock keys of these accounts, in account order (taken all or none)."""
        return [self.lock(account_id) for account_id in sorted(set(account_ids))]

    def pending(self, queue: str, partition: int) -> str:
        return f"{self.prefix}:pending:{queue}:{partition}"

    def dispatch_mark(self, queue: str, partition: int) -> str:
        return f"{self.prefix}:dispatch:{queue}:{partition}"

    def done_channel(self, queue: str) -> str:
        return f"{self.prefix}:done:{queue}"

    @property
    def events_channel(self) -> str:
        """Where the events pump says which tenants have new events (a wake-up only)."""
        return f"{self.prefix}:events"

    def webhook_mark(self, endpoint_id: str) -> str:
        """Set while a delivery task for the endpoint is queued or running."""
        return f"{self.prefix}:webhooks:{endpoint_id}"

    @property
    def stream_pause(self) -> str:
        """Set for a while after a run of the NATS stream stopped short: runs wait it out."""
        return f"{self.prefix}:stream:pause"

    @property
    def limits(self) -> str:
        return f"{self.prefix}:limits"
