"""the ledger partitioned by month; request rows forgotten after the idempotency window

`ledger_entries` becomes a table partitioned by range of `ulid`. An entry's ULID
starts with the millisecond it was made (the applier makes it from the entry's
`created_at`), so each partition holds one month of entries (UTC), and a lookup by
ULID (a lot's, a reversal's) reads one partition. The table that was `ledger_entries`
is attached unchanged, without a copy, as `ledger_entries_initial`: it holds every
entry made before the month after this migration. `ledger_entries_partition(month)`
makes a month's partition; this revision makes the three after that, and the beat
keeps three months ahead (docs/storage.md).

PostgreSQL enforces a unique index on a partitioned table only if it holds the
partition key. The ULID is the key, unique (the lots refer to it) by a constraint
rather than a primary key, which the old table's id holds. The entry's id, its
request and the one reversal, expiry or closing per subject are unique within each
partition, by indexes that ledger_entries_partition() makes on each. Across months
the request's row lock and the requests' own unique indexes guard them, as before.

`ledger_entries.request_id` no longer refers to `adjustment_requests`: the request of
an adjustment is deleted once the idempotency window has passed (the entry keeps all
it said). `ix_adjustment_requests_final` finds those requests, oldest first.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 18:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = r"""
-- The least ULID of a moment: its 48-bit millisecond time in Crockford's base 32, then
-- zeros; ULIDs made at or after `at` sort at or after it.
CREATE FUNCTION ulid_floor(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ',
                             ((ms >> (5 * (9 - i))) & 31)::int + 1, 1), '' ORDER BY i)
           || '0000000000000000'
    FROM (SELECT floor(extract(epoch FROM at) * 1000)::bigint AS ms) t,
         generate_series(0, 9) AS i
$$;

-- The partition of the month that `month` falls in (UTC), made if missing, with the
-- indexes unique per partition and the TRUNCATE guard. NULL if a partition already
-- holds that month (ledger_entries_initial holds the month of the migration).
CREATE FUNCTION ledger_entries_partition(month date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    starts timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    name text := 'ledger_entries_' || to_char(starts AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I PARTITION OF ledger_entries FOR VALUES FROM (%L) TO (%L)',
                       name, ulid_floor(starts), ulid_floor(starts + interval '1 month'));
    EXCEPTION
        WHEN invalid_object_definition THEN RETURN NULL;  -- overlaps another partition
        WHEN duplicate_table THEN RETURN name;  -- made by a concurrent call
    END;
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (id)', name || '_id', name);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (request_id)', name || '_request', name);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (related_id) WHERE type = %L',
                   name || '_one_reversal', name, 'reversal');
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (related_id) WHERE type = %L',
                   name || '_one_expiry', name, 'expire');
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (related_id)'
                   ' WHERE type IN (''capture'', ''release'')', name || '_one_closing', name);
    EXECUTE format('CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON %I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_refuse_change()', name);
    RETURN name;
END
$$;
"""

# The ledger's read indexes and triggers, made on the partitioned table (which gives
# each partition its indexes and its row trigger) and, going back, on the plain one.
READ_INDEXES = """
CREATE INDEX ix_ledger_entries_account_id ON ledger_entries (account_id, id);
CREATE INDEX ix_ledger_entries_account_created
    ON ledger_entries (account_id, created_at DESC, id DESC);
CREATE INDEX ix_ledger_entries_tenant_created
    ON ledger_entries (tenant_id, created_at DESC, id DESC)
    INCLUDE (account_id, amount, reputation_type, type);
CREATE INDEX ix_ledger_entries_tenant_context
    ON ledger_entries (tenant_id, points_type, reputation_context text_pattern_ops);
"""
TRIGGERS = """
CREATE TRIGGER ledger_entries_immutable
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_refuse_change();
CREATE TRIGGER events_entries
    AFTER INSERT ON ledger_entries REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_of_entries();
"""

# The table as it was becomes the first partition: its indexes and constraints are
# renamed out of the way of the parent's, its id sequence passes to the parent (a
# partitioned table has no identity column before PostgreSQL 17) and its triggers move
# to the parent, which clones the row trigger onto every partition.
PARTITION = f"""
ALTER TABLE ledger_entries RENAME TO ledger_entries_initial;
ALTER TABLE ledger_entries_initial DROP CONSTRAINT ledger_entries_request_id_fkey;
ALTER TABLE ledger_entries_initial RENAME CONSTRAINT ledger_entries_pkey
    TO ledger_entries_initial_id;
ALTER TABLE ledger_entries_initial RENAME CONSTRAINT ledger_entries_ulid_key
    TO ledger_entries_initial_ulid;
ALTER TABLE ledger_entries_initial RENAME CONSTRAINT ledger_entries_request_id_key
    TO ledger_entries_initial_request;
ALTER INDEX ix_ledger_entries_one_reversal RENAME TO ledger_entries_initial_one_reversal;
ALTER INDEX ix_ledger_entries_one_expiry RENAME TO ledger_entries_initial_one_expiry;
ALTER INDEX ix_ledger_entries_one_closing RENAME TO ledger_entries_initial_one_closing;
ALTER INDEX ix_ledger_entries_account_id RENAME TO ledger_entries_initial_account_id;
ALTER INDEX ix_ledger_entries_account_created RENAME TO ledger_entries_initial_account_created;
ALTER INDEX ix_ledger_entries_tenant_created RENAME TO ledger_entries_initial_tenant_created;
ALTER INDEX ix_ledger_entries_tenant_context RENAME TO ledger_entries_initial_tenant_context;
DROP TRIGGER ledger_entries_immutable ON ledger_entries_initial;
DROP TRIGGER events_entries ON ledger_entries_initial;

DO $$
DECLARE
    last bigint;
    called boolean;
BEGIN
    SELECT last_value, is_called INTO last, called FROM ledger_entries_id_seq;
    ALTER TABLE ledger_entries_initial ALTER COLUMN id DROP IDENTITY;
    CREATE SEQUENCE ledger_entries_id_seq;
    PERFORM setval('ledger_entries_id_seq', last, called);
END
$$;

CREATE TABLE ledger_entries (LIKE ledger_entries_initial INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (ulid);
ALTER TABLE ledger_entries ALTER COLUMN id SET DEFAULT nextval('ledger_entries_id_seq');
ALTER SEQUENCE ledger_entries_id_seq OWNED BY ledger_entries.id;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_ulid_key UNIQUE (ulid);
{READ_INDEXES}
DO $$
BEGIN
    EXECUTE format(
        'ALTER TABLE ledger_entries ATTACH PARTITION ledger_entries_initial'
        ' FOR VALUES FROM (MINVALUE) TO (%L)',
        ulid_floor(date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                   + interval '1 month'));
END
$$;

{TRIGGERS}
ALTER TABLE lots DROP CONSTRAINT lots_entry_ulid_fkey,
    ADD CONSTRAINT lots_entry_ulid_fkey FOREIGN KEY (entry_ulid) REFERENCES ledger_entries (ulid);
ALTER TABLE lot_moves DROP CONSTRAINT lot_moves_entry_ulid_fkey,
    ADD CONSTRAINT lot_moves_entry_ulid_fkey
        FOREIGN KEY (entry_ulid) REFERENCES ledger_entries (ulid);

SELECT ledger_entries_partition(
    (date_trunc('month', now() AT TIME ZONE 'UTC') + ahead * interval '1 month')::date)
FROM generate_series(1, 3) AS ahead;

CREATE INDEX ix_adjustment_requests_final ON adjustment_requests (id)
    WHERE entry_type = 'adjust' AND status IN ('completed', 'rejected');
"""

# Back to one table: the entries are copied into a table shaped as 0010 left it.
UNPARTITION = f"""
DROP INDEX ix_adjustment_requests_final;
ALTER TABLE lots DROP CONSTRAINT lots_entry_ulid_fkey;
ALTER TABLE lot_moves DROP CONSTRAINT lot_moves_entry_ulid_fkey;
ALTER TABLE ledger_entries RENAME TO ledger_entries_partitioned;
ALTER SEQUENCE ledger_entries_id_seq RENAME TO ledger_entries_partitioned_id_seq;
ALTER TABLE ledger_entries_partitioned RENAME CONSTRAINT ledger_entries_ulid_key
    TO ledger_entries_partitioned_ulid_key;
ALTER INDEX ix_ledger_entries_account_id RENAME TO ledger_entries_partitioned_account_id;
ALTER INDEX ix_ledger_entries_account_created
    RENAME TO ledger_entries_partitioned_account_created;
ALTER INDEX ix_ledger_entries_tenant_created RENAME TO ledger_entries_partitioned_tenant_created;
ALTER INDEX ix_ledger_entries_tenant_context RENAME TO ledger_entries_partitioned_tenant_context;

CREATE TABLE ledger_entries
    (LIKE ledger_entries_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE ledger_entries ALTER COLUMN id DROP DEFAULT;
INSERT INTO ledger_entries SELECT * FROM ledger_entries_partitioned ORDER BY id;
ALTER TABLE ledger_entries ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY;
SELECT setval('ledger_entries_id_seq', last_value, is_called)
FROM ledger_entries_partitioned_id_seq;
DROP TABLE ledger_entries_partitioned;

ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_pkey PRIMARY KEY (id),
    ADD CONSTRAINT ledger_entries_ulid_key UNIQUE (ulid),
    ADD CONSTRAINT ledger_entries_request_id_key UNIQUE (request_id),
    ADD CONSTRAINT ledger_entries_request_id_fkey
        FOREIGN KEY (request_id) REFERENCES adjustment_requests (id);
{READ_INDEXES}
CREATE UNIQUE INDEX ix_ledger_entries_one_reversal ON ledger_entries (related_id)
    WHERE type = 'reversal';
CREATE UNIQUE INDEX ix_ledger_entries_one_expiry ON ledger_entries (related_id)
    WHERE type = 'expire';
CREATE UNIQUE INDEX ix_ledger_entries_one_closing ON ledger_entries (related_id)
    WHERE type IN ('capture', 'release');
{TRIGGERS}
ALTER TABLE lots
    ADD CONSTRAINT lots_entry_ulid_fkey FOREIGN KEY (entry_ulid) REFERENCES ledger_entries (ulid);
ALTER TABLE lot_moves ADD CONSTRAINT lot_moves_entry_ulid_fkey
    FOREIGN KEY (entry_ulid) REFERENCES ledger_entries (ulid);

DROP FUNCTION ledger_entries_partition(date);
DROP FUNCTION ulid_floor(timestamptz);
"""


def upgrade() -> None:
    op.execute(FUNCTIONS)
    op.execute(PARTITION)


def downgrade() -> None:
    op.execute(UNPARTITION)
