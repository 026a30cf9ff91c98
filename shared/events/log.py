"""The event log: what each event type means, the sequencer that numbers committed
events, and reading them back by position.

Events are written in the transaction of the change they describe, with no number: by
the statement that makes the change where one statement alone makes it (a request's
accept, a chunk's entries and outcomes: migration 0017), by the database's triggers
for the rest (migration 0009), by `write_events` for tally's own notices.
`number_events` numbers them afterwards, one pass at a time under a transaction-level
advisory lock: a pass sees every event committed before it took the lock, gives them
the next ids in write order (and each account's next `account_seq`), and commits
before the next pass can start. So an id is visible only once every smaller id is: a
reader that has seen id N never later finds an event below N, whatever order the
writers committed in. A plain sequence filled at insert would not give that
(docs/events.md, "Order").
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.fields import format_timestamp

# The types, in the order docs/events.md documents them. Written with their changes
# (module docstring) unless marked; "tally" ones are written by tally's own jobs.
EVENT_TYPES = (
    "request.accepted",
    "request.applied",
    "request.rejected",
    "entry.created",
    "hold.opened",
    "hold.captured",
    "hold.released",
    "hold.timed_out",
    "lot.expired",
    "lot.expiring",  # shared.events.notices
    "balance.crossed",  # shared.events.notices
    "account.frozen",
    "account.unfrozen",
    "batch.accepted",
    "batch.completed",
    "webhook.endpoint_disabled",  # shared.events.webhooks
)

# The event log's advisory lock keys, all here so that no two jobs share one by mistake
# (the fan-out and the stream once did: a stream run waiting on NATS held up the pump).
SEQUENCER_LOCK = 0x7A11E7E1  # one numbering pass at a time (transaction-level)
# Transaction-level. Held exclusively by the writers of new pending deliveries (the
# fan-out, redelivery) and shared by a sender recording its round: a new delivery's wait
# (QUEUE_WAITS_UNTIL) is read from its queue, so a failed head's record must never commit
# between that read and the new row's commit, or the new row would be due while the
# queue it joins waits (and sent before the queue's earlier events).
FAN_OUT_LOCK = 0x7A11E7E2
DELIVERY_LOCK = 0x7A11E7E3  # with hashtext(endpoint id): one delivery run per endpoint
STREAM_LOCK = 0x7A11E7E4  # one NATS stream run at a time (transaction-level, tried)
# A statement numbers the unnumbered events among this many write positions from the
# first unnumbered one; a pass repeats until none is left.
NUMBER_PER_STATEMENT = 10_000

# Written so that no estimate can make a plan of it slow (the database may have no
# statistics of events: autovacuum behind, or off). The unnumbered events are taken by
# a range of `seq` from the first of them, not by ORDER BY seq LIMIT, which a bitmap scan
# of every unnumbered row and a sort answered (each statement read a backlog of 109,000
# for 10,000). An account's last account_seq is looked up once per account in the
# statement, on its first row, and spread over its rows by a window, not joined: with
# the range estimated at one row, a nested loop ran the lookups once per row and
# account (seconds a statement, and the pump fell ever further behind).
NUMBER = text("""
    WITH unnumbered AS (
        SELECT seq, account_id FROM events
        WHERE id IS NULL
          AND seq >= (SELECT min(seq) FROM events WHERE id IS NULL)
          AND seq < (SELECT min(seq) FROM events WHERE id IS NULL) + :limit
    ), ranked AS (
        SELECT seq, account_id,
               row_number() OVER (ORDER BY seq) AS position,
               row_number() OVER (PARTITION BY account_id ORDER BY seq) AS nth
        FROM unnumbered
    ), based AS (
        SELECT r.*,
               CASE WHEN r.nth = 1 AND r.account_id IS NOT NULL THEN COALESCE(
                   (SELECT max(x.account_seq) FROM events x WHERE x.account_id = r.account_id),
                   0) END AS base
        FROM ranked r
    ), numbered AS (
        SELECT seq,
               (SELECT COALESCE(max(id), 0) FROM events) + position AS id,
               max(base) OVER (PARTITION BY account_id) + nth AS account_seq
        FROM based
    )
    UPDATE events e SET id = n.id, account_seq = n.account_seq
    FROM numbered n WHERE e.seq = n.seq
    RETURNING e.id, e.tenant_id, e.account_id, e.type,
              CASE WHEN e.type = 'entry.created'
                        AND e.payload->>'points_type' = ANY(CAST(:followed AS text[]))
                   THEN e.payload END AS payload
""")


@dataclass(frozen=True)
class Numbered:
    """What a sequencer pass numbered: how many, the last id, the tenants they are of, and
    the entries among them of the points types asked for, with their payloads (for the
    notices that follow balances; no other payload is read back)."""

    count: int
    last_id: int
    tenants: frozenset[str]
    entries: list[tuple[int, str, str, dict[str, Any]]]  # (id, tenant, account, payload)


def number_events(session: Session, followed: Collection[str] = ()) -> Numbered:
    """Number every committed event that has no id yet, and return the entries of the
    points types `followed` (those with balance thresholds) with their payloads: an
    entry's payload read back costs its JSON twice, out of PostgreSQL and into Python.
    The caller commits."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEQUENCER_LOCK})
    last_id, count = 0, 0
    tenants: set[str] = set()
    entries: list[tuple[int, str, str, dict[str, Any]]] = []
    while True:
        rows = session.execute(
            NUMBER, {"limit": NUMBER_PER_STATEMENT, "followed": sorted(followed)}
        ).all()
        for row in rows:
            last_id = max(last_id, row.id)
            tenants.add(row.tenant_id)
            if row.payload is not None:
                entries.append((row.id, row.tenant_id, row.account_id, row.payload))
        count += len(rows)
        if not rows:
            break
    return Numbered(count, last_id, frozenset(tenants), sorted(entries))


@dataclass(frozen=True)
class Event:
    id: int
    account_seq: int | None
    tenant_id: str
    account_id: str | None
    type: str
    occurred_at: datetime
    payload: dict[str, Any]


def event_document(event: Event) -> dict[str, Any]:
    """An event as every consumer gets it: the feed's items, a webhook's body, a NATS
    message (docs/events.md, "The envelope")."""
    return {
        "id": event.id,
        "type": event.type,
        "tenant_id": event.tenant_id,
        "account_id": event.account_id,
        "account_seq": event.account_seq,
        "occurred_at": format_timestamp(event.occurred_at),
        "data": event.payload,
    }


READ = """
    SELECT id, account_seq, tenant_id, account_id, type, occurred_at, payload
    FROM events
    WHERE id > :after AND id IS NOT NULL {filters}
    ORDER BY id
    LIMIT :limit
"""


def read_events(
    session: Session,
    tenant_id: str | None,
    after: int,
    limit: int,
    types: Sequence[str] = (),
    account_id: str | None = None,
) -> list[Event]:
    """A tenant's numbered events past `after` (every tenant's for None: the NATS
    stream), in id order, optionally of some types or of one account."""
    filters = ""
    values: dict[str, Any] = {"after": after, "limit": limit}
    if tenant_id is not None:
        filters += " AND tenant_id = :tenant"
        values["tenant"] = tenant_id
    if types:
        filters += " AND type = ANY(:types)"
        values["types"] = list(types)
    if account_id is not None:
        filters += " AND account_id = :account"
        values["account"] = account_id
    rows = session.execute(text(READ.format(filters=filters)), values)
    return [Event(*row) for row in rows]


def cursor_position(session: Session, name: str) -> int:
    """How far the consumer `name` has read (0 before its first read)."""
    position = session.execute(
        text("SELECT position FROM event_cursors WHERE name = :name"), {"name": name}
    ).scalar()
    return int(position or 0)


def advance_cursor(session: Session, name: str, position: int) -> None:
    """Record that `name` has read up to `position` (in the caller's transaction)."""
    session.execute(
        text("""
            INSERT INTO event_cursors (name, position) VALUES (:name, :position)
            ON CONFLICT (name) DO UPDATE
            SET position = GREATEST(event_cursors.position, EXCLUDED.position),
                updated_at = now()
        """),
        {"name": name, "position": position},
    )


def prune_events(session: Session, older_than_days: int) -> int:
    """The retention job: delete numbered events older than this many days. The only
    deletion the append-only trigger lets through."""
    session.execute(text("SET LOCAL tally.events_retention = 'on'"))
    deleted = session.execute(
        text("""
            DELETE FROM events
            WHERE occurred_at < now() - make_interval(days => :days) AND id IS NOT NULL
        """),
        {"days": older_than_days},
    )
    return int(deleted.rowcount)  # type: ignore[attr-defined]


def write_events(
    session: Session, events: Sequence[tuple[str, str | None, str, dict[str, Any]]]
) -> None:
    """Write events that tally's own jobs make (tenant, account, type, payload), unnumbered
    like every event (the next sequencer pass numbers them), in the caller's transaction."""
    if not events:
        return
    session.execute(
        text("""
            INSERT INTO events (tenant_id, account_id, type, payload)
            SELECT * FROM unnest(CAST(:tenants AS text[]), CAST(:accounts AS text[]),
                                 CAST(:types AS text[]), CAST(:payloads AS jsonb[]))
        """),
        {
            "tenants": [event[0] for event in events],
            "accounts": [event[1] for event in events],
            "types": [event[2] for event in events],
            "payloads": [json.dumps(event[3], separators=(",", ":")) for event in events],
        },
    )
