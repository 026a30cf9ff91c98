"""How much work is waiting: Celery queue depth in Redis, and the outbox backlog in PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.flow.dispatch import Lane, queue_of
from shared.ledger.partitions import PARTITIONS_AHEAD_SECONDS

# kombu's Redis transport keeps one list per priority step: "name", "name\x06\x163", ...
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_depths(redis: Redis, base: str) -> dict[str, int]:
    """Messages waiting in each lane's Celery queue (every priority list), by queue name."""
    queues = [queue_of(base, lane) for lane in Lane]
    pipeline = redis.pipeline(transaction=False)
    for queue in queues:
        for step in PRIORITY_STEPS:
            pipeline.llen(queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}")
    lengths = iter(int(length) for length in pipeline.execute())
    return {queue: sum(next(lengths) for _ in PRIORITY_STEPS) for queue in queues}


@dataclass(frozen=True)
class Outbox:
    pending: int
    oldest_age_seconds: float
    # How long until the ledger's last partition ends (shared.ledger.partitions): entries
    # after that are refused. Read with the backlog: one round trip per scrape.
    partitions_ahead_seconds: float = 0.0


OUTBOX = text(f"""
    SELECT COUNT(*), COALESCE(EXTRACT(EPOCH FROM now() - MIN(created_at)), 0),
           ({PARTITIONS_AHEAD_SECONDS})
    FROM adjustment_requests WHERE status IN ('queued', 'processing')
""")


def outbox(session: Session) -> Outbox:
    """Requests accepted but not yet applied or rejected, and the age of the oldest."""
    pending, age, ahead = session.execute(OUTBOX).one()
    return Outbox(int(pending), float(age), float(ahead))
