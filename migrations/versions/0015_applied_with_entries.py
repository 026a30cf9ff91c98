"""events: a request's `request.applied` is written with its entry

An applied chunk wrote its events in two statement-level triggers: `events_entries`
(each entry's `entry.created`) and `events_requests_final` (each outcome; it fires for
every UPDATE of `adjustment_requests`). Each call has a fixed cost, most of it its own
INSERT into `events`, which is the larger part of what the event log costs a chunk of
one request (PERFORMANCE.md, "What events cost"; `bench/apply_chunks.py`).

A request is completed only by the statement that writes its entry (the applier's
WRITE_ENTRIES; reconcile holds every completed request to exactly one entry), so the
entries' trigger now writes both, in one INSERT: the chunk's `entry.created` in entry
order, then the `request.applied` of each request a caller made, in request order, as
before. `events_requests_final` writes only rejections (they have no entry), still
sorted by request id, and returns at once from a statement that rejected nothing.

Measured with `bench/apply_chunks.py` (time in the PL/pgSQL triggers per chunk, median of
400, 0014 -> 0015): a chunk of 1 request 0.209 -> 0.187 ms, 4: 0.307 -> 0.283,
16: 0.638 -> 0.588, 64: 2.004 -> 1.853. (A row-level trigger for rejections saved
0.017 ms more at a chunk of one, but wrote a statement's rejections in the order its
plan updated the rows.)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 21:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The public user id in payloads, as 0009 names it.
USER_ID = "COALESCE(u.external_id, u.id::text)"

# Each entry's payload, as 0009 wrote it (`e` a new entry with `user_ref`, its user's id).
ENTRY_PAYLOAD = """jsonb_build_object(
                   'entry_id', e.id, 'entry_ulid', e.ulid, 'request_id', e.request_id,
                   'type', e.type, 'amount', e.amount, 'frozen_amount', e.frozen_amount,
                   'expired', e.expired, 'balance_before', e.balance_before,
                   'balance_after', e.balance_after, 'user_id', e.user_ref,
                   'points_type', e.points_type, 'reputation_context', e.reputation_context,
                   'comment', e.comment, 'reason', e.reason, 'source', e.source,
                   'related_id', NULLIF(e.related_id, ''))"""

UPGRADE = f"""
CREATE OR REPLACE FUNCTION events_of_entries() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (tenant_id, account_id, type, payload)
    WITH made AS (
        SELECT e.*, {USER_ID} AS user_ref
        FROM new_rows e
        JOIN accounts a ON a.id = e.account_id
        JOIN users u ON u.id = a.user_id
    )
    SELECT tenant_id, account_id, type, payload FROM (
        SELECT e.tenant_id, e.account_id, 0 AS step, e.id AS position,
               'entry.created' AS type, {ENTRY_PAYLOAD} AS payload
        FROM made e
        UNION ALL
        SELECT r.tenant_id, r.account_id, 1, r.id, 'request.applied', jsonb_build_object(
                   'request_id', r.id, 'idempotency_key', r.idempotency_key,
                   'operation', r.entry_type, 'amount', r.amount, 'user_id', e.user_ref,
                   'points_type', e.points_type, 'batch_id', r.batch_id,
                   'entry_id', r.ledger_entry_id, 'cut', r.cut)
        FROM made e
        JOIN adjustment_requests r ON r.id = e.request_id
        WHERE r.entry_type NOT IN ('expire', 'timeout')
    ) written
    ORDER BY step, position;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION events_of_final_requests() RETURNS trigger AS $$
BEGIN
    PERFORM FROM new_rows WHERE status = 'rejected' LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;  -- most statements (a completion's event is its entry's trigger's)
    END IF;
    INSERT INTO events (tenant_id, account_id, type, payload)
    SELECT r.tenant_id, r.account_id, 'request.rejected', jsonb_build_object(
               'request_id', r.id, 'idempotency_key', r.idempotency_key,
               'operation', r.entry_type, 'amount', r.amount, 'user_id', {USER_ID},
               'points_type', a.points_type, 'batch_id', r.batch_id,
               'error', jsonb_build_object('code', r.error_code, 'message', r.error_message))
    FROM new_rows r
    JOIN old_rows o ON o.id = r.id
    JOIN accounts a ON a.id = r.account_id
    JOIN users u ON u.id = a.user_id
    WHERE r.status = 'rejected' AND o.status NOT IN ('completed', 'rejected')
      AND r.entry_type NOT IN ('expire', 'timeout')
    ORDER BY r.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"""

# 0009's entries and 0010's outcomes, as they were.
DOWNGRADE = f"""
CREATE OR REPLACE FUNCTION events_of_entries() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (tenant_id, account_id, type, payload)
    SELECT e.tenant_id, e.account_id, 'entry.created', {ENTRY_PAYLOAD}
    FROM (SELECT e.*, {USER_ID} AS user_ref
          FROM new_rows e
          JOIN accounts a ON a.id = e.account_id
          JOIN users u ON u.id = a.user_id) e
    ORDER BY e.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION events_of_final_requests() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (tenant_id, account_id, type, payload)
    SELECT r.tenant_id, r.account_id,
           CASE r.status WHEN 'completed' THEN 'request.applied' ELSE 'request.rejected' END,
           jsonb_build_object(
               'request_id', r.id, 'idempotency_key', r.idempotency_key,
               'operation', r.entry_type, 'amount', r.amount, 'user_id', {USER_ID},
               'points_type', a.points_type, 'batch_id', r.batch_id)
           || CASE WHEN r.status = 'completed'
                   THEN jsonb_build_object('entry_id', r.ledger_entry_id, 'cut', r.cut)
                   ELSE jsonb_build_object('error', jsonb_build_object(
                            'code', r.error_code, 'message', r.error_message)) END
    FROM new_rows r
    JOIN old_rows o ON o.id = r.id
    JOIN accounts a ON a.id = r.account_id
    JOIN users u ON u.id = a.user_id
    WHERE r.status IN ('completed', 'rejected') AND o.status NOT IN ('completed', 'rejected')
      AND r.entry_type NOT IN ('expire', 'timeout')
    ORDER BY r.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
