"""A tenant's periods: its time zone, and the period totals summed afresh from the entries.

The applier adds each chunk's entries to `period_totals` (shared/ledger/apply.py);
the sums here are what those rows must equal (reconcile's invariant 13), and what a
change of time zone rebuilds them from; likewise the scores' counts (`period_scores`)
from the period totals.
"""

from __future__ import annotations

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

# What a set of entries `e` sums to, in the columns of `period_totals`: its amounts and
# count, and the account's other figures as reconcile counts them (earned and spent
# points are each entry's `amount + expired` when above and below zero).
ENTRY_FIGURES = """
    sum(e.amount) AS total, count(*) AS entries,
    sum(e.frozen_amount) AS frozen_total, sum(e.expired) AS expired_total,
    COALESCE(sum(e.amount + e.expired) FILTER (WHERE e.amount + e.expired > 0), 0)
        AS earned_total,
    COALESCE(-sum(e.amount + e.expired) FILTER (WHERE e.amount + e.expired < 0), 0)
        AS spent_total
"""

# Every period of every entry of the tenants named (all of them when :tenants is NULL),
# in their tenant's time zone, summed as the applier sums them.
SUMS = f"""
    SELECT e.account_id, p.period,
           CASE p.period WHEN 'all' THEN DATE '1970-01-01'
                ELSE date_trunc(p.period, e.created_at AT TIME ZONE tn.time_zone)::date
           END AS starts,
           e.tenant_id, e.points_type, a.user_id, {ENTRY_FIGURES},
           COALESCE(sum(e.amount) FILTER (WHERE e.type = 'reversal'), 0) AS reversal_total,
           count(*) FILTER (WHERE e.type = 'reversal') AS reversal_entries
    FROM ledger_entries e
    JOIN accounts a ON a.id = e.account_id
    JOIN tenants tn ON tn.id = e.tenant_id
    CROSS JOIN unnest(ARRAY['day', 'week', 'month', 'quarter', 'year', 'all']) AS p(period)
    WHERE CAST(:tenant AS text) IS NULL OR e.tenant_id = :tenant
    GROUP BY 1, 2, 3, 4, 5, 6
"""

ZONE_KNOWN = text("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = :zone)")

# What counted towards a cap is kept, by account and period: the rebuilt rows keep the
# old rows' `capped` where the period starts on the same day, and 0 elsewhere.
REBUILD = text(f"""
    WITH old AS (
        DELETE FROM period_totals WHERE tenant_id = :tenant
        RETURNING account_id, period, starts, capped
    )
    INSERT INTO period_totals (account_id, period, starts, tenant_id, points_type, user_id,
                               total, entries, reversal_total, reversal_entries, capped,
                               frozen_total, expired_total, earned_total, spent_total)
    SELECT s.account_id, s.period, s.starts, s.tenant_id, s.points_type, s.user_id, s.total,
           s.entries, s.reversal_total, s.reversal_entries, COALESCE(o.capped, 0),
           s.frozen_total, s.expired_total, s.earned_total, s.spent_total
    FROM ({SUMS}) s
    LEFT JOIN old o
        ON o.account_id = s.account_id AND o.period = s.period AND o.starts = s.starts
""")


# How many accounts of the tenants named (all when :tenant is NULL) stand at each score
# of each period's board, as the applier counts them in `period_scores`.
SCORES = """
    SELECT t.tenant_id, t.points_type, t.period, t.starts, k.kind, k.score,
           period_score_shard(t.account_id) AS shard, count(*) AS users
    FROM period_totals t
    CROSS JOIN LATERAL period_score_kinds(t.total, t.entries, t.reversal_total,
                                          t.reversal_entries) k
    WHERE CAST(:tenant AS text) IS NULL OR t.tenant_id = :tenant
    GROUP BY 1, 2, 3, 4, 5, 6, 7
"""

# After the old rows are deleted: in one statement the insert would still see them.
COUNT_SCORES = text(f"""
    INSERT INTO period_scores (tenant_id, points_type, period, starts, kind, score, shard,
                               users)
    {SCORES}
""")


def recount_scores(connection: Connection | Session, tenant_id: str) -> None:
    """Count the tenant's board scores afresh from its period totals."""
    connection.execute(
        text("DELETE FROM period_scores WHERE tenant_id = :tenant"), {"tenant": tenant_id}
    )
    connection.execute(COUNT_SCORES, {"tenant": tenant_id})


class UnknownZone(ValueError):
    pass


def set_time_zone(session: Session, tenant_id: str, zone: str) -> int:
    """Draw the tenant's periods in `zone` (an IANA name) from now on, and re-sum its
    period totals in it; return how many rows it has now.

    The table lock waits for the appliers writing totals and holds the next ones until
    the commit, so none adds to a row of the old calendar after the rebuild read it.
    """
    if not session.scalar(ZONE_KNOWN, {"zone": zone}):
        raise UnknownZone(f"{zone!r} is not a time zone PostgreSQL knows (e.g. Europe/Berlin)")
    session.execute(text("LOCK TABLE period_totals IN SHARE ROW EXCLUSIVE MODE"))
    session.execute(
        text("UPDATE tenants SET time_zone = :zone WHERE id = :tenant"),
        {"zone": zone, "tenant": tenant_id},
    )
    session.execute(REBUILD, {"tenant": tenant_id})
    recount_scores(session, tenant_id)
    count = session.scalar(
        text("SELECT count(*) FROM period_totals WHERE tenant_id = :tenant"), {"tenant": tenant_id}
    )
    return int(count or 0)
