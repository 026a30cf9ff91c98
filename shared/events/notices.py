"""The notices people ask for, edge-triggered: "points will expire" some days before a
lot expires (once per lot), and "balance crossed X" for configured thresholds (once per
crossing, not on every entry while above). docs/events.md describes both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.events.log import write_events
from shared.platform.config import PointsType


def crossings(before: int, after: int, thresholds: Iterable[int]) -> list[tuple[int, str]]:
    """The thresholds a balance moving from `before` to `after` crosses: ("up") when it
    was below and is now at or above, ("down") when it was at or above and is now below."""
    found = []
    for threshold in thresholds:
        if before < threshold <= after:
            found.append((threshold, "up"))
        elif after < threshold <= before:
            found.append((threshold, "down"))
    return found


def thresholded(points_types: Mapping[str, PointsType]) -> list[str]:
    """The points types with balance thresholds: those whose entries `note_crossings`
    reads (the sequencer returns only theirs)."""
    return sorted(name for name, points_type in points_types.items()
                  if points_type.balance_thresholds)  # fmt: skip


def note_crossings(
    session: Session,
    points_types: Mapping[str, PointsType],
    entries: Iterable[tuple[int, str, str, dict[str, Any]]],
) -> int:
    """Write a `balance.crossed` event for each threshold that each entry crossed."""
    events = []
    for entry_event_id, tenant_id, account_id, payload in entries:
        points_type = points_types.get(payload["points_type"])
        if points_type is None or not points_type.balance_thresholds:
            continue
        before, after = payload["balance_before"], payload["balance_after"]
        for threshold, direction in crossings(before, after, points_type.balance_thresholds):
            events.append(
                (
                    tenant_id,
                    account_id,
                    "balance.crossed",
                    {
                        "threshold": threshold,
                        "direction": direction,
                        "balance_before": before,
                        "balance_after": after,
                        "entry_id": payload["entry_id"],
                        "entry_event_id": entry_event_id,
                        "user_id": payload["user_id"],
                        "points_type": payload["points_type"],
                    },
                )
            )
    write_events(session, events)
    return len(events)


WARN = text("""
    UPDATE lots l SET warned_at = now()
    FROM (
        SELECT l.entry_ulid FROM lots l JOIN accounts a ON a.id = l.account_id
        WHERE l.expired_at IS NULL AND l.warned_at IS NULL AND l.remaining > 0
          AND a.points_type = :points_type
          AND l.expires_at <= now() + make_interval(days => :days)
        ORDER BY l.expires_at
        LIMIT :limit
        FOR UPDATE OF l SKIP LOCKED
    ) due, accounts a, users u
    WHERE l.entry_ulid = due.entry_ulid AND a.id = l.account_id AND u.id = a.user_id
    RETURNING l.tenant_id, l.account_id, l.entry_ulid, l.remaining, l.expires_at,
              COALESCE(u.external_id, u.id::text) AS user_id
""")


def warn_expiring_lots(session: Session, points_types: Mapping[str, PointsType], limit: int) -> int:
    """Write `lot.expiring` once for each lot with points left that expires within its
    points type's `expiry_warning_days`; the lot remembers it was warned."""
    events = []
    for points_type in points_types.values():
        if points_type.expiry_warning_days <= 0:
            continue
        rows = session.execute(
            WARN,
            {"points_type": points_type.name, "days": points_type.expiry_warning_days,
             "limit": limit},
        )  # fmt: skip
        for row in rows:
            events.append(
                (
                    row.tenant_id,
                    row.account_id,
                    "lot.expiring",
                    {
                        "lot_id": row.entry_ulid,
                        "remaining": row.remaining,
                        "expires_at": row.expires_at.isoformat(),
                        "days_before": points_type.expiry_warning_days,
                        "user_id": row.user_id,
                        "points_type": points_type.name,
                    },
                )
            )
    write_events(session, events)
    return len(events)
