"""period scores: how many users hold each score on each period's board

`period_scores` counts, per tenant, points type, period, board kind and score, the
accounts whose period total puts them there: a board's size is the sum of its rows,
a rank the sum of the rows above a score, a dense rank how many of them hold users.
Counting the rows of `period_totals` instead read a whole period's rows, and under
writes (six period rows updated per entry) most of them from the table, as the
visibility map kept losing their pages: 48-261 ms a board at ten million entries
(PERFORMANCE.md).

The applier moves an account from its old score to its new one in the statement that
updates its period totals (shared/ledger/apply.py). Each score's count is split into
`shard`s by account, so that two appliers adding accounts to the same score seldom
wait for each other's commit; they take the rows in key order, so they cannot
deadlock over them. Only `users` changes, which no index holds: the updates are HOT,
and the room a fill factor of 70 leaves on each page keeps them so.

`period_score_kinds(total, entries, reversal_total, reversal_entries)` says on which
boards a period total stands and with what score: `all` (its total, once it has an
entry), `manual` (its total without reversals, once it has an entry that is not one)
and `reversals` (its reversals' total, once it has one), as the boards read
`period_totals`.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 02:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = """
CREATE FUNCTION period_score_kinds(total bigint, entries bigint, reversal_total bigint,
                                   reversal_entries bigint)
RETURNS TABLE (kind text, score bigint) AS $$
    SELECT 'all', total WHERE entries > 0
    UNION ALL
    SELECT 'manual', total - reversal_total WHERE entries > reversal_entries
    UNION ALL
    SELECT 'reversals', reversal_total WHERE reversal_entries > 0
$$ LANGUAGE sql IMMUTABLE PARALLEL SAFE;

-- The shard an account counts in: its id's last character (a ULID's is random), so
-- that the same account is always counted in the same row of a score.
CREATE FUNCTION period_score_shard(account_id text) RETURNS smallint AS $$
    SELECT CAST(ascii(right(account_id, 1)) & 3 AS smallint)
$$ LANGUAGE sql IMMUTABLE PARALLEL SAFE;

CREATE TABLE period_scores (
    tenant_id varchar(64) NOT NULL,
    points_type varchar(64) NOT NULL,
    period varchar(8) NOT NULL,
    starts date NOT NULL,
    kind varchar(16) NOT NULL,
    score bigint NOT NULL,
    shard smallint NOT NULL,
    users bigint NOT NULL,
    PRIMARY KEY (tenant_id, points_type, period, starts, kind, score, shard),
    -- No check that `users` stays at or above zero: PostgreSQL checks the row an
    -- INSERT ... ON CONFLICT proposes (a move's -1) before it finds the row to update.
    -- Reconcile compares every row with the period totals (invariant 13).
    CONSTRAINT kind_known CHECK (kind IN ('all', 'manual', 'reversals'))
) WITH (fillfactor = 70);
"""

# The scores of the period totals there are.
BACKFILL = """
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
    op.execute(TABLES)
    op.execute(BACKFILL)


def downgrade() -> None:
    op.execute("DROP TABLE period_scores")
    op.execute("DROP FUNCTION period_score_shard(text)")
    op.execute("DROP FUNCTION period_score_kinds(bigint, bigint, bigint, bigint)")
