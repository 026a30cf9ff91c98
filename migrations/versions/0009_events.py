"""the event log, its cursors, webhook endpoints and their deliveries

Every change of state writes an event row in the transaction that makes it: the
triggers below (row-level where a statement changes one row or a WHEN clause leaves
nearly every row out; statement-level over the transition tables where a chunk
changes many rows together: its entries and outcomes, holds, lots, batches) insert
one event per change, so no code path that changes a request, an entry, a hold, a
lot, an account's status or a batch can forget its event, and a rolled-back change
leaves none. docs/events.md documents each type and its payload.

An event is written with `id` and `account_seq` empty; the sequencer
(shared/events/log.py) numbers committed events one pass at a time under an advisory
lock, so `id` only grows in the order events become visible: a reader that has seen
id N never later finds an event below N, however late its transaction committed.
`seq` is only the write order, for the sequencer.

A webhook delivery is retried until its first attempt (`first_attempt_at`, cleared by
a redelivery) is older than the retry window, then kept as failed; an endpoint with no
2xx since `failing_since` for long enough is disabled.

Events are append-only like the ledger: the only update allowed is the sequencer's
numbering of an unnumbered row, and rows are deleted only by the retention job,
which says so with `SET LOCAL tally.events_retention = 'on'`.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 14:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = """
CREATE TABLE events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id bigint,
    account_seq bigint,
    tenant_id varchar(64) NOT NULL,
    account_id varchar(26),
    type varchar(64) NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    payload jsonb NOT NULL,
    CONSTRAINT numbered_together CHECK ((id IS NULL) = (account_seq IS NULL)
                                        OR (account_id IS NULL AND account_seq IS NULL))
);
-- Unique among the numbered; an unnumbered row is in no index on id but this one.
CREATE UNIQUE INDEX ix_events_id ON events (id) WHERE id IS NOT NULL;
CREATE INDEX ix_events_unnumbered ON events (seq) WHERE id IS NULL;
CREATE INDEX ix_events_tenant ON events (tenant_id, id) WHERE id IS NOT NULL;
CREATE UNIQUE INDEX ix_events_account ON events (account_id, account_seq)
    WHERE account_seq IS NOT NULL;
CREATE INDEX ix_events_time ON events (occurred_at);

CREATE TABLE event_cursors (
    name varchar(64) PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_endpoints (
    id varchar(26) PRIMARY KEY,
    tenant_id varchar(64) NOT NULL REFERENCES tenants (id),
    url text NOT NULL,
    types text[] NOT NULL DEFAULT '{}',
    secret text NOT NULL,
    previous_secret text,
    previous_secret_until timestamptz,
    status varchar(16) NOT NULL DEFAULT 'active',
    failing_since timestamptz,
    disabled_reason text,
    description text NOT NULL DEFAULT '',
    created_by bigint NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT endpoint_status CHECK (status IN ('active', 'disabled'))
);
CREATE INDEX ix_webhook_endpoints_tenant ON webhook_endpoints (tenant_id);

CREATE TABLE webhook_deliveries (
    endpoint_id varchar(26) NOT NULL REFERENCES webhook_endpoints (id),
    event_id bigint NOT NULL,
    account_id varchar(26),
    status varchar(16) NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    first_attempt_at timestamptz,
    last_status_code integer,
    last_latency_ms integer,
    last_error text,
    delivered_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, event_id),
    CONSTRAINT delivery_status CHECK (status IN ('pending', 'delivered', 'failed'))
);
-- An endpoint's pending deliveries in event order; and each account's queue of them.
CREATE INDEX ix_webhook_deliveries_pending ON webhook_deliveries (endpoint_id, event_id)
    WHERE status = 'pending';
CREATE INDEX ix_webhook_deliveries_queue ON webhook_deliveries
    (endpoint_id, (COALESCE(account_id, '')), event_id) WHERE status = 'pending';

ALTER TABLE lots ADD COLUMN warned_at timestamptz;
"""

APPEND_ONLY = """
CREATE FUNCTION events_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.id IS NULL AND NEW.id IS NOT NULL
       AND (NEW.seq, NEW.tenant_id, NEW.account_id, NEW.type, NEW.occurred_at, NEW.payload)
           IS NOT DISTINCT FROM
           (OLD.seq, OLD.tenant_id, OLD.account_id, OLD.type, OLD.occurred_at, OLD.payload) THEN
        RETURN NEW;  -- the sequencer numbers a row, once
    END IF;
    IF TG_OP = 'DELETE' AND current_setting('tally.events_retention', true) = 'on' THEN
        RETURN OLD;  -- the retention job
    END IF;
    RAISE EXCEPTION 'rows of events are append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_guard();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
"""

# The public user id (seed 002): the external id, or the integer id as text.
USER_ID = "COALESCE(u.external_id, u.id::text)"

WRITERS = f"""
-- Row-level where a statement usually changes one row (an accept), or where the WHEN
-- clause leaves almost every row out (statuses): a statement-level trigger plans its
-- query over the transition table on every call, 0.5 ms per single accept. A chunk's
-- entries and outcomes are statement-level: one plan for the chunk's many rows.
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
                   THEN jsonb_build_object('entry_id', r.ledger_entry_id)
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

CREATE FUNCTION events_of_holds() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- A hold placed and closed in one chunk is inserted closed: opened, then closed.
        INSERT INTO events (tenant_id, account_id, type, payload)
        SELECT tenant_id, account_id, type, payload FROM (
            SELECT h.tenant_id, h.account_id, h.request_id, 0 AS step, 'hold.opened' AS type,
                   jsonb_build_object('hold_id', h.request_id, 'amount', h.amount,
                                      'expires_at', h.expires_at) AS payload
            FROM new_rows h
            UNION ALL
            SELECT h.tenant_id, h.account_id, h.request_id, 1, 'hold.' || h.status,
                   jsonb_build_object('hold_id', h.request_id, 'amount', h.amount,
                                      'captured', h.captured, 'closed_by', h.closed_by)
            FROM new_rows h WHERE h.status <> 'open'
        ) opened ORDER BY request_id, step;
    ELSE
        INSERT INTO events (tenant_id, account_id, type, payload)
        SELECT h.tenant_id, h.account_id, 'hold.' || h.status, jsonb_build_object(
            'hold_id', h.request_id, 'amount', h.amount, 'captured', h.captured,
            'closed_by', h.closed_by)
        FROM new_rows h JOIN old_rows o ON o.request_id = h.request_id
        WHERE o.status = 'open' AND h.status <> 'open'
        ORDER BY h.request_id;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_holds_opened
    AFTER INSERT ON holds REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_of_holds();

CREATE TRIGGER events_holds_closed
    AFTER UPDATE ON holds REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_of_holds();

CREATE FUNCTION events_of_lots() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (tenant_id, account_id, type, payload)
    SELECT l.tenant_id, l.account_id, 'lot.expired', jsonb_build_object(
        'lot_id', l.entry_ulid, 'amount', l.amount, 'expired', l.expired_amount,
        'expires_at', l.expires_at)
    FROM new_rows l JOIN old_rows o ON o.entry_ulid = l.entry_ulid
    WHERE o.expired_at IS NULL AND l.expired_at IS NOT NULL
    ORDER BY l.entry_ulid;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_lots
    AFTER UPDATE ON lots REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_of_lots();

CREATE FUNCTION events_of_account() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (tenant_id, account_id, type, payload)
    SELECT NEW.tenant_id, NEW.id,
           CASE NEW.status WHEN 'frozen' THEN 'account.frozen' ELSE 'account.unfrozen' END,
           jsonb_build_object('user_id', {USER_ID}, 'points_type', NEW.points_type,
                              'balance', NEW.balance, 'frozen_balance', NEW.frozen_balance)
    FROM users u WHERE u.id = NEW.user_id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_accounts
    AFTER UPDATE ON accounts
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION events_of_account();

CREATE FUNCTION events_of_batches() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO events (tenant_id, account_id, type, payload)
        SELECT b.tenant_id, NULL, 'batch.accepted', jsonb_build_object(
            'batch_id', b.id, 'idempotency_key', b.idempotency_key, 'total', b.total)
        FROM new_rows b ORDER BY b.id;
    ELSE
        INSERT INTO events (tenant_id, account_id, type, payload)
        SELECT b.tenant_id, NULL, 'batch.completed', jsonb_build_object(
            'batch_id', b.id, 'idempotency_key', b.idempotency_key, 'total', b.total,
            'completed', b.completed, 'rejected', b.rejected, 'replayed', b.replayed)
        FROM new_rows b JOIN old_rows o ON o.id = b.id
        WHERE o.completed_at IS NULL AND b.completed_at IS NOT NULL
        ORDER BY b.id;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_batches_accepted
    AFTER INSERT ON batches REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_of_batches();

CREATE TRIGGER events_batches_completed
    AFTER UPDATE ON batches REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_of_batches();
"""

TRIGGERS = [
    ("events_requests_accepted", "adjustment_requests"),
    ("events_requests_final", "adjustment_requests"),
    ("events_entries", "ledger_entries"),
    ("events_holds_opened", "holds"),
    ("events_holds_closed", "holds"),
    ("events_lots", "lots"),
    ("events_accounts", "accounts"),
    ("events_batches_accepted", "batches"),
    ("events_batches_completed", "batches"),
]
FUNCTIONS = [
    "events_of_new_request",
    "events_of_final_requests",
    "events_of_entries",
    "events_of_holds",
    "events_of_lots",
    "events_of_account",
    "events_of_batches",
]


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(APPEND_ONLY)
    op.execute(WRITERS)


def downgrade() -> None:
    for trigger, table in TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}()")
    op.execute("ALTER TABLE lots DROP COLUMN warned_at")
    op.execute("DROP TABLE webhook_deliveries")
    op.execute("DROP TABLE webhook_endpoints")
    op.execute("DROP TABLE event_cursors")
    op.execute("DROP TABLE events")
    op.execute("DROP FUNCTION events_guard()")
