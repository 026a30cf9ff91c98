"""period scores: a total without reversals counts once, as `plain`

`period_scores` counted every period total on the `all` board and again on the `manual`
board, at the same score unless the total had reversals, which most never have. So
each entry moved its account out of and into two scores on each of its six periods:
some 24 score moves per adjustment where 12 now do, 3-9 % of the applier's time for
chunks of 16 and 64 adjustments (PERFORMANCE.md, "The period upkeep alone").

Now a total without reversals stands once, as `plain`, which both the `all` and the
`manual` board sum (shared/reads/boards.py); `all`, `manual` and `reversals` count the
totals that have reversals, as before. `period_score_kinds()` says so, and the applier,
reconcile and a change of time zone all ask it; the scores are counted afresh from the
period totals.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 09:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = """
CREATE OR REPLACE FUNCTION period_score_kinds(total bigint, entries bigint,
                                              reversal_total bigint, reversal_entries bigint)
RETURNS TABLE (kind text, score bigint) AS $$
    SELECT 'plain', total WHERE entries > 0 AND reversal_entries = 0
    UNION ALL
    SELECT 'all', total WHERE reversal_entries > 0
    UNION ALL
    SELECT 'manual', total - reversal_total
    WHERE reversal_entries > 0 AND entries > reversal_entries
    UNION ALL
    SELECT 'reversals', reversal_total WHERE reversal_entries > 0
$$ LANGUAGE sql IMMUTABLE PARALLEL SAFE;
"""

OLD_KINDS = """
CREATE OR REPLACE FUNCTION period_score_kinds(total bigint, entries bigint,
                                              reversal_total bigint, reversal_entries bigint)
RETURNS TABLE (kind text, score bigint) AS $$
    SELECT 'all', total WHERE entries > 0
    UNION ALL
    SELECT 'manual', total - reversal_total WHERE entries > reversal_entries
    UNION ALL
    SELECT 'reversals', reversal_total WHERE reversal_entries > 0
$$ LANGUAGE sql IMMUTABLE PARALLEL SAFE;
"""

# The kinds a row may have: the constraint is dropped before the recount, put back after.
CHECK = "ALTER TABLE period_scores ADD CONSTRAINT kind_known CHECK (kind IN ({kinds}))"

# Every board's scores counted afresh from the period totals, by the function above.
RECOUNT = """
LOCK TABLE period_totals IN SHARE MODE;
TRUNCATE period_scores;
INSERT INTO period_scores (tenant_id, points_type, period, starts, kind, score, shard, users)
SELECT t.tenant_id, t.points_type, t.period, t.starts, k.kind, k.score,
       period_score_shard(t.account_id), count(*)
FROM period_totals t
CROSS JOIN LATERAL period_score_kinds(t.total, t.entries, t.reversal_total,
                                      t.reversal_entries) k
GROUP BY 1, 2, 3, 4, 5, 6, 7;
ANALYZE period_scores;
"""


def upgrade() -> None:
    op.execute("ALTER TABLE period_scores DROP CONSTRAINT kind_known")
    op.execute(KINDS)
    op.execute(RECOUNT)
    op.execute(CHECK.format(kinds="'plain', 'all', 'manual', 'reversals'"))


def downgrade() -> None:
    op.execute("ALTER TABLE period_scores DROP CONSTRAINT kind_known")
    op.execute(OLD_KINDS)
    op.execute(RECOUNT)
    op.execute(CHECK.format(kinds="'all', 'manual', 'reversals'"))
