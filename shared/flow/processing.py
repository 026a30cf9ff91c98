"""Draining accounts: take their Redis locks, apply pending requests, announce them."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from redis import Redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.flow.locks import AccountLocks
from shared.flow.notify import announce
from shared.ledger.apply import PENDING_STATUSES, Applied, apply_pending
from shared.models import AdjustmentRequest
from shared.platform.config import Cap
from shared.platform.db import transaction
from shared.platform.keys import RedisKeys
from shared.platform.metrics import LOCK_WAIT

log = logging.getLogger(__name__)


class AccountBusy(Exception):
    """Another worker held the account's lock for longer than we would wait."""


def drain_accounts(
    account_ids: Sequence[str],
    *,
    redis: Redis,
    keys: RedisKeys,
    channel: str,
    sessions: sessionmaker[Session],
    lock_ttl: float,
    lock_wait: float,
    chunk: int,
    caps: Mapping[str, Cap] | None = None,
) -> Applied:
    """Apply up to `chunk` pending requests of these accounts in one transaction.

    One chunk per call keeps a task short, so a worker told to stop finishes the
    chunk in hand and exits; the caller re-publishes while more are pending.
    The Redis locks (TTL plus a unique token) are taken all or none, so two
    callers with overlapping accounts cannot deadlock; they keep workers from
    queueing up on the account rows, while correctness rests on the row locks
    that apply_pending takes in PostgreSQL.
    """
    ids = sorted(set(account_ids))
    locks = AccountLocks(redis, keys.locks(ids), lock_ttl)
    started = time.monotonic()
    acquired = locks.acquire(lock_wait)
    LOCK_WAIT.observe(time.monotonic() - started)
    if not acquired:
        raise AccountBusy(ids[0] if len(ids) == 1 else f"{len(ids)} accounts")
    try:
        with transaction(sessions) as session:
            applied = apply_pending(session, ids, chunk, caps)
        # Only single adjustments have waiters; a batch is followed through its status.
        announce(redis, channel, (o.request_id for o in applied.outcomes if o.batch_id is None))
        return applied
    finally:
        expired = locks.release()
        if expired:
            # The row locks kept the ledger right; the TTL was simply too short.
            log.warning("%d account locks expired before release", expired)


def note_error(sessions: sessionmaker[Session], account_ids: Sequence[str], error: str) -> None:
    """Record a failure on the accounts' pending requests, if the database lets us.

    Rows another transaction holds are skipped, not waited for: an applier holding them
    is deciding them now, and a worker's error path must not hang behind it (say, behind
    a worker whose Redis lock a failover lost and who still holds the row locks).
    """
    free = (
        select(AdjustmentRequest.id)
        .where(
            AdjustmentRequest.account_id.in_(account_ids),
            AdjustmentRequest.status.in_(PENDING_STATUSES),
        )
        .with_for_update(skip_locked=True)
    )
    with transaction(sessions) as session:
        session.execute(
            update(AdjustmentRequest)
            .where(AdjustmentRequest.id.in_(free.scalar_subquery()))
            .values(attempts=AdjustmentRequest.attempts + 1, last_error=error[:1000])
        )
