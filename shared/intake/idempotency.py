"""Idempotency: a stable fingerprint of a parsed adjustment, compared on key reuse, and the
window after which an adjustment's request row, with its key, is forgotten."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

# The oldest final adjustments, by the index kept for this scan (migration 0011): ids
# follow acceptance, so the first one inside the window ends the scan.
OLDEST_FINAL = text("""
    SELECT id, created_at FROM adjustment_requests
    WHERE entry_type = 'adjust' AND status IN ('completed', 'rejected')
    ORDER BY id
    LIMIT :limit
""")
FORGET = text("""
    DELETE FROM adjustment_requests
    WHERE id = ANY(:ids) AND created_at < :before
      AND entry_type = 'adjust' AND status IN ('completed', 'rejected')
""")


class IdempotencyConflict(Exception):
    """The key was already used for a different adjustment (answered 422)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with a different body")
        self.key = key


def fingerprint(values: Sequence[Any]) -> str:
    """SHA-256 of the canonical JSON of a parsed adjustment's values, in field order.

    It is taken over what was parsed, not the bytes sent, so the same adjustment
    sent as JSON, as a form or in a batch has the same fingerprint.
    """
    canonical = json.dumps(list(values), separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def forget_requests(
    session: Session, window_days: int, at: datetime, limit: int
) -> tuple[int, bool]:
    """Delete up to `limit` request rows of adjustments, applied or rejected, accepted more
    than `window_days` before `at`; return how many, and whether more may be due.

    Only plain adjustments go: a pending request waits for its worker, and the requests
    of reversals, expiries and holds stay, since their rows keep one live request per
    subject (the holds refer to theirs). The ledger entries keep all an adjustment said.
    """
    before = at - timedelta(days=window_days)
    rows = session.execute(OLDEST_FINAL, {"limit": limit}).all()
    due = [row.id for row in rows if row.created_at < before]
    if not due:
        return 0, False
    deleted = session.execute(FORGET, {"ids": due, "before": before})
    return int(deleted.rowcount), len(due) == limit  # type: ignore[attr-defined]
