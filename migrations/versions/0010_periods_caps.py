"""period totals, tenants' time zones, the cut of a capped request

`period_totals` holds, per account and period (the day, ISO week, month, quarter and
year an entry falls in, in its tenant's time zone, and `all` time), the sum and count
of its entries, the same for its reversal entries, and what counted towards the
points type's cap. The applier adds to it in the statement that writes the entries
(shared/ledger/apply.py), so a period leaderboard read from it is exact; the rows made
here sum the entries written before this revision.

`tenants.time_zone` (an IANA name, UTC by default) draws the tenant's periods.
`adjustment_requests.cut` is what a cap took off the amount asked for: the entry
moved `amount - cut`.

The request.applied event now says the cut.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 19:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = """
ALTER TABLE tenants ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC';
ALTER TABLE adjustment_requests ADD COLUMN cut bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT cut_within_amount CHECK (cut >= 0 AND (cut = 0 OR cut < amount));

CREATE TABLE period_totals (
    account_id varchar(26) NOT NULL REFERENCES accounts (id),
    period varchar(8) NOT NULL,
    starts date NOT NULL,
    tenant_id varchar(64) NOT NULL,
    points_type varchar(64) NOT NULL,
    user_id bigint NOT NULL,
    total bigint NOT NULL,
    entries bigint NOT NULL,
    reversal_total bigint NOT NULL,
    reversal_entries bigint NOT NULL,
    capped bigint NOT NULL,
    PRIMARY KEY (account_id, period, starts),
    CONSTRAINT period_known
        CHECK (period IN ('day', 'week', 'month', 'quarter', 'year', 'all')),
    CONSTRAINT counts_within CHECK (reversal_entries >= 0 AND reversal_entries <= entries)
);
-- The three boards: every entry, the manual ones (all but reversals), the reversals.
CREATE INDEX ix_period_totals_board
    ON period_totals (tenant_id, points_type, period, starts, total DESC, user_id);
CREATE INDEX ix_period_totals_manual
    ON period_totals (tenant_id, points_type, period, starts, (total - reversal_total) DESC,
                      user_id)
    WHERE entries > reversal_entries;
CREATE INDEX ix_period_totals_reversals
    ON period_totals (tenant_id, points_type, period, starts, reversal_total DESC, user_id)
    WHERE reversal_entries > 0;
"""

# The periods of the entries written so far, in UTC (every tenant's zone until now).
BACKFILL = """
INSERT INTO period_totals (account_id, period, starts, tenant_id, points_type, user_id,
                           total, entries, reversal_total, reversal_entries, capped)
SELECT e.account_id, p.period,
       CASE p.period WHEN 'all' THEN DATE '1970-01-01'
            ELSE date_trunc(p.period, e.created_at AT TIME ZONE 'UTC')::date END,
       e.tenant_id, e.points_type, a.user_id,
       sum(e.amount), count(*),
       COALESCE(sum(e.amount) FILTER (WHERE e.type = 'reversal'), 0),
       count(*) FILTER (WHERE e.type = 'reversal'),
       0
FROM ledger_entries e
JOIN accounts a ON a.id = e.account_id
CROSS JOIN unnest(ARRAY['day', 'week', 'month', 'quarter', 'year', 'all']) AS p(period)
GROUP BY 1, 2, 3, 4, 5, 6;
ANALYZE period_totals;
"""

APPLIED_EVENT = """
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
                   THEN jsonb_build_object({APPLIED})
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

# As 0009 names a user in event payloads.
USER_ID = "COALESCE(u.external_id, u.id::text)"


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(BACKFILL)
    applied = "'entry_id', r.ledger_entry_id, 'cut', r.cut"
    op.execute(APPLIED_EVENT.replace("{USER_ID}", USER_ID).replace("{APPLIED}", applied))


def downgrade() -> None:
    applied = "'entry_id', r.ledger_entry_id"
    op.execute(APPLIED_EVENT.replace("{USER_ID}", USER_ID).replace("{APPLIED}", applied))
    op.execute("DROP TABLE period_totals")
    op.execute("ALTER TABLE adjustment_requests DROP COLUMN cut")
    op.execute("ALTER TABLE tenants DROP COLUMN time_zone")
