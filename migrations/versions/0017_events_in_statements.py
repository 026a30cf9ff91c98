"""a request's accept, entry and outcome write their events in their own statements

The three commonest events, `request.accepted`, `entry.created` and `request.applied` or
`request.rejected`, were written by triggers (0009, 0010): a PL/pgSQL call, an INSERT
planned apart and, for a chunk's entries and outcomes, transition tables, some 0.1 ms
each for a chunk of one. Each of these changes has one statement that makes it (the
accept's, shared/intake/adjustments.py; the chunk's write and its rejections',
shared/ledger/apply.py), and that statement now inserts the events itself, in a
data-modifying CTE: the same rows, in the same transaction, in the same order. The
triggers go. Holds, lots, accounts and batches keep theirs.

Upgrading: stop the API and the workers of the earlier release before this migration
runs. A process of the earlier release writing to the migrated database would write
these changes without their events, and one of this release writing to a database
not yet migrated would write them twice.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 11:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGERS = [
    ("events_requests_accepted", "adjustment_requests", "events_of_new_request"),
    ("events_requests_final", "adjustment_requests", "events_of_final_requests"),
    ("events_entries", "ledger_entries", "events_of_entries"),
]

# As 0009 names a user in event payloads.
USER_ID = "COALESCE(u.external_id, u.id::text)"

# The triggers as 0009, 0010 (the outcome's `cut`) and 0011 (the entries' on the
# partitioned table) left them.
RESTORED = f"""
CREATE FUNCTION events_of_new_request() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (tenant_id, account_id, type, payload)
    SELECT NEW.tenant_id, NEW.account_id, 'request.accepted', jsonb_build_object(
        'request_id', NEW.id, 'idempotency_key', NEW.idempotency_key,
        'operation', NEW.entry_type, 'amount', NEW.amount, 'user_id', {USER_ID},
        'points_type', a.points_type, 'related_id', NULLIF(NEW.related_id, ''))
    FROM accounts a JOIN users u ON u.id = a.user_id
    WHERE a.id = NEW.account_id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_requests_accepted
    AFTER INSERT ON adjustment_requests
    FOR EACH ROW WHEN (NEW.batch_id IS NULL AND NEW.entry_type NOT IN ('expire', 'timeout'))
    EXECUTE FUNCTION events_of_new_request();

CREATE FUNCTION events_of_final_requests() RETURNS trigger AS $$
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

CREATE TRIGGER events_requests_final
    AFTER UPDATE ON adjustment_requests REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_of_final_requests();

CREATE FUNCTION events_of_entries() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (tenant_id, account_id, type, payload)
    SELECT e.tenant_id, e.account_id, 'entry.created', jsonb_build_object(
        'entry_id', e.id, 'entry_ulid', e.ulid, 'request_id', e.request_id,
        'type', e.type, 'amount', e.amount, 'frozen_amount', e.frozen_amount,
        'expired', e.expired, 'balance_before', e.balance_before,
        'balance_after', e.balance_after, 'user_id', {USER_ID},
        'points_type', e.points_type, 'reputation_context', e.reputation_context,
        'comment', e.comment, 'reason', e.reason, 'source', e.source,
        'related_id', NULLIF(e.related_id, ''))
    FROM new_rows e
    JOIN accounts a ON a.id = e.account_id
    JOIN users u ON u.id = a.user_id
    ORDER BY e.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_entries
    AFTER INSERT ON ledger_entries REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_of_entries();
"""


def upgrade() -> None:
    for trigger, table, function in TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
        op.execute(f"DROP FUNCTION {function}()")


def downgrade() -> None:
    op.execute(RESTORED)
