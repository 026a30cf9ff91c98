"""period totals keep every figure of an account: frozen, expired, earned, spent

`period_totals` summed, per account and period, the amounts of its entries (and its
reversals'). It now also sums what else an account's figures are made of, as
reconcile counts them from the entries: `frozen_total` (the frozen amounts),
`expired_total` (the points expired), `earned_total` and `spent_total` (each entry's
`amount + expired`, when above and below zero). So an account as it stood at a
moment is its month rows before that moment's month plus the entries of that month
up to it (shared/reads/history.py): two short index ranges, one of them in a single
partition of the ledger, where summing the entries read every month before the moment
(10-15 ms at ten million entries, PERFORMANCE.md).

The backfill sums the entries written so far once, by day in each tenant's time zone,
and every coarser period from a finer one it nests in, so that no statement groups
more rows than the ledger has.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 06:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = """
ALTER TABLE period_totals
    ADD COLUMN frozen_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN expired_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN earned_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN spent_total bigint NOT NULL DEFAULT 0;
"""

# The entries' figures by account and local day.
DAYS = """
CREATE TEMPORARY TABLE period_figures ON COMMIT DROP AS
SELECT e.account_id, 'day'::text AS period,
       (e.created_at AT TIME ZONE tn.time_zone)::date AS starts,
       sum(e.frozen_amount) AS frozen_total, sum(e.expired) AS expired_total,
       COALESCE(sum(e.amount + e.expired) FILTER (WHERE e.amount + e.expired > 0), 0)
           AS earned_total,
       COALESCE(-sum(e.amount + e.expired) FILTER (WHERE e.amount + e.expired < 0), 0)
           AS spent_total
FROM ledger_entries e
JOIN tenants tn ON tn.id = e.tenant_id
GROUP BY 1, 3;
"""

# Each coarser period from a finer one it nests in.
ROLLUPS = [("week", "day"), ("month", "day"), ("quarter", "month"), ("year", "month"),
           ("all", "year")]  # fmt: skip
ROLLUP = """
INSERT INTO period_figures
SELECT account_id, '{period}', {starts}, sum(frozen_total), sum(expired_total),
       sum(earned_total), sum(spent_total)
FROM period_figures WHERE period = '{finer}'
GROUP BY 1, 3;
"""

FILL = """
UPDATE period_totals t
SET frozen_total = f.frozen_total, expired_total = f.expired_total,
    earned_total = f.earned_total, spent_total = f.spent_total
FROM period_figures f
WHERE t.account_id = f.account_id AND t.period = f.period AND t.starts = f.starts;
ANALYZE period_totals;
"""


def upgrade() -> None:
    op.execute(COLUMNS)
    op.execute(DAYS)
    for period, finer in ROLLUPS:
        starts = (
            "DATE '1970-01-01'"
            if period == "all"
            else f"CAST(date_trunc('{period}', CAST(starts AS timestamp)) AS date)"
        )
        op.execute(ROLLUP.format(period=period, starts=starts, finer=finer))
    op.execute(FILL)


def downgrade() -> None:
    op.execute(
        "ALTER TABLE period_totals DROP COLUMN frozen_total, DROP COLUMN expired_total,"
        " DROP COLUMN earned_total, DROP COLUMN spent_total"
    )
