"""Benchmark the read routes on a large ledger: fill 1,000,000 entries over 10,000 users
(set-based SQL, consistent balances and chains), then print median latencies of
  - one user's first page of GET /api/v2/score/,
  - a reputation_context prefix filter,
  - the leaderboard over a month window.

Usage: TALLY_DATABASE_URL=... TALLY_REDIS_URL=... python bench/read_latency.py [--entries N]
The database must be migrated; the bench data lives in its own tenant `bench` (reused if present).
"""

from __future__ import annotations

import argparse
import statistics
import time

from sqlalchemy import text

from api import create_app
from shared.intake.auth import create_token
from shared.models import Role, User
from shared.platform.config import load_settings
from shared.platform.resources import Resources

TENANT = "bench"
CONTEXTS = [
    "contest|first_place|apis",
    "contest|second_place|apis",
    "contest|spring|docs",
    "forum|answer|accepted",
    "forum|spam",
    "moderation|warning",
]

# Each coarser period and a finer one it nests in.
ROLLUPS = [("week", "day"), ("month", "day"), ("quarter", "month"), ("year", "month"),
           ("all", "year")]  # fmt: skip


def _starts(period: str) -> str:
    """The first day of the period a finer period's row (its `starts`) falls in."""
    if period == "all":
        return "DATE '1970-01-01'"
    return f"date_trunc('{period}', starts::timestamp)::date"


FILL = [
    # As a replica applies rows: no trigger fires, so the fill writes no events (three
    # per entry, which would more than double its time) and the reads see the ledger alone.
    "SET LOCAL session_replication_role = replica",
    "INSERT INTO tenants (id, name) VALUES ('bench', 'bench') ON CONFLICT DO NOTHING",
    """INSERT INTO users (tenant_id, username, real_name, email, avatar, description, role)
       SELECT 'bench', 'bench_' || g, 'Bench User ' || g, '', '', '', 'user'
       FROM generate_series(1, :users) g""",
    """INSERT INTO users (tenant_id, username, real_name, email, avatar, description, role)
       VALUES ('bench', 'bench_admin', 'Bench Admin', '', '', '', 'admin')""",
    """INSERT INTO accounts (id, tenant_id, user_id, points_type, allow_negative, balance,
                            frozen_balance, expired_points, total_earned, total_spent,
                            exchange_rate, status, version)
       SELECT 'BENCHACC' || lpad(u.id::text, 18, '0'), 'bench', u.id, 'reputation', true,
              0, 0, 0, 0, 0, 1, 'active', 0
       FROM users u WHERE u.tenant_id = 'bench' AND u.role = 'user'""",
    # Requests, spread over the last :days days in id order, as if applied as they came.
    """INSERT INTO adjustment_requests (tenant_id, idempotency_key, fingerprint, account_id,
              user_id, amount, entry_type, reputation_context, comment, reason, source,
              related_id, allow_negative, created_by, status, attempts, created_at,
              started_at, completed_at)
       SELECT 'bench', 'bench-' || g, 'bench', a.id, a.user_id,
              (ARRAY[-5, -1, 1, 2, 5, 10, 20])[1 + (g * 7919) % 7], 'adjust',
              (ARRAY['contest|first_place|apis', 'contest|second_place|apis',
                     'contest|spring|docs', 'forum|answer|accepted', 'forum|spam',
                     'moderation|warning'])[1 + (g * 104729) % 6],
              'bench entry ' || g, '', '', '', false, admin.id, 'completed', 1,
              now() - :days * interval '1 day' + :days * interval '1 day' * (g::float8 / :entries),
              now() - :days * interval '1 day' + :days * interval '1 day' * (g::float8 / :entries),
              now() - :days * interval '1 day' + :days * interval '1 day' * (g::float8 / :entries)
       FROM generate_series(1::bigint, :entries) g
       JOIN accounts a ON a.id = 'BENCHACC' || lpad(
           ((SELECT min(id) FROM users WHERE tenant_id = 'bench') + (g * 7) % :users)::text,
           18, '0')
       CROSS JOIN (SELECT id FROM users WHERE username = 'bench_admin'
                   AND tenant_id = 'bench') admin""",
    # A fresh database: its ledger partitioned by month from the first day filled (the
    # migration's first partition, empty, makes way); an existing ledger keeps its own.
    """DO $$
       BEGIN
           IF to_regclass('ledger_entries_initial') IS NOT NULL
              AND NOT EXISTS (SELECT FROM ledger_entries) THEN
               ALTER TABLE ledger_entries DETACH PARTITION ledger_entries_initial;
               DROP TABLE ledger_entries_initial;
           END IF;
       END
       $$""",
    """SELECT ledger_entries_partition(CAST(month AS date))
       FROM generate_series(now() - :days * interval '1 day' - interval '1 month',
                            now() + interval '3 months', interval '1 month') AS month""",
    """INSERT INTO ledger_entries (ulid, tenant_id, account_id, points_type, request_id, amount,
              balance_before, balance_after, negative_allowed, type, reputation_type,
              reputation_context, comment, reason, source, related_id, idempotency_key,
              created_by, created_at)
       SELECT left(ulid_floor(r.created_at), 10) || lpad(r.id::text, 16, '0'), 'bench',
              r.account_id, 'reputation', r.id,
              r.amount,
              SUM(r.amount) OVER w - r.amount, SUM(r.amount) OVER w, true, 'adjust', 10,
              r.reputation_context, r.comment, '', '', '', r.idempotency_key,
              r.created_by, r.created_at
       FROM adjustment_requests r WHERE r.tenant_id = 'bench'
       WINDOW w AS (PARTITION BY r.account_id ORDER BY r.id)
       ORDER BY r.id""",
    """UPDATE adjustment_requests r SET ledger_entry_id = e.id
       FROM ledger_entries e WHERE e.request_id = r.id AND r.tenant_id = 'bench'""",
    """UPDATE accounts a SET balance = s.total, total_earned = s.earned,
              total_spent = s.spent, version = s.n
       FROM (SELECT account_id, SUM(amount) total,
                    COALESCE(SUM(amount) FILTER (WHERE amount > 0), 0) earned,
                    COALESCE(-SUM(amount) FILTER (WHERE amount < 0), 0) spent, COUNT(*) n
             FROM ledger_entries WHERE tenant_id = 'bench' GROUP BY account_id) s
       WHERE a.id = s.account_id""",
    # The period totals the applier would have kept (UTC): the days summed from the
    # entries, each coarser period from a finer one it nests in (a week from its days, a
    # quarter and a year from their months, all time from the years), so no statement
    # groups more rows than the ledger has.
    """INSERT INTO period_totals (account_id, period, starts, tenant_id, points_type, user_id,
                                 total, entries, reversal_total, reversal_entries, capped,
                                 frozen_total, expired_total, earned_total, spent_total)
       SELECT e.account_id, 'day', (e.created_at AT TIME ZONE 'UTC')::date, 'bench',
              'reputation', a.user_id, sum(e.amount), count(*), 0, 0, 0, 0, 0,
              COALESCE(sum(e.amount) FILTER (WHERE e.amount > 0), 0),
              COALESCE(-sum(e.amount) FILTER (WHERE e.amount < 0), 0)
       FROM ledger_entries e JOIN accounts a ON a.id = e.account_id
       WHERE e.tenant_id = 'bench'
       GROUP BY 1, 3, 6""",
    *(
        f"""INSERT INTO period_totals (account_id, period, starts, tenant_id, points_type,
                                      user_id, total, entries, reversal_total,
                                      reversal_entries, capped, frozen_total, expired_total,
                                      earned_total, spent_total)
            SELECT account_id, '{period}', {_starts(period)}, 'bench', 'reputation', user_id,
                   sum(total), sum(entries), 0, 0, 0, 0, 0, sum(earned_total), sum(spent_total)
            FROM period_totals WHERE tenant_id = 'bench' AND period = '{finer}'
            GROUP BY 1, 3, 6"""
        for period, finer in ROLLUPS
    ),
    # And how many of them stand at each score (shared/ledger/periods.py's SCORES).
    """INSERT INTO period_scores (tenant_id, points_type, period, starts, kind, score, shard,
                                 users)
       SELECT t.tenant_id, t.points_type, t.period, t.starts, k.kind, k.score,
              period_score_shard(t.account_id), count(*)
       FROM period_totals t
       CROSS JOIN LATERAL period_score_kinds(t.total, t.entries, t.reversal_total,
                                             t.reversal_entries) k
       WHERE t.tenant_id = 'bench'
       GROUP BY 1, 2, 3, 4, 5, 6, 7""",
    "ANALYZE",
]


def fill(
    resources: Resources, users: int, entries: int, days: int = 365, statements: list[str] = FILL
) -> None:
    """Run the fill's statements (by default all of FILL) unless the bench tenant has
    entries already."""
    with resources.engine.begin() as connection:
        have = connection.scalar(
            text("SELECT count(*) FROM ledger_entries WHERE tenant_id='bench'")
        )
        if have:
            print(f"reusing {have} bench ledger entries")
            return
        started = time.perf_counter()
        for statement in statements:
            step = time.perf_counter()
            connection.execute(text(statement), {"users": users, "entries": entries, "days": days})
            print(f"  {time.perf_counter() - step:7.1f} s  {statement.split()[0:3]}", flush=True)
        print(
            f"filled {entries} entries over {users} users in {time.perf_counter() - started:.1f} s"
        )


def median_ms(call, runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        response = call()
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    settings = load_settings()
    resources = Resources(settings)
    fill(resources, args.users, args.entries)
    with resources.sessions.begin() as session:
        admin = session.query(User).filter_by(tenant_id=TENANT, username="bench_admin").one()
        assert admin.role == Role.ADMIN
        _, token = create_token(session, admin, "bench")
        some_user = session.scalar(
            text(
                "SELECT user_id FROM accounts WHERE tenant_id = 'bench'"
                " ORDER BY id LIMIT 1 OFFSET 4321"
            )
        )
    resources.close()

    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {token}"}
    month_from = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() - 60 * 86400))
    month_to = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() - 30 * 86400))
    cases = {
        "user's first page": f"/api/v2/score/?user_id={some_user}",
        "context prefix filter": "/api/v2/score/?reputation_context=contest|first_place",
        "leaderboard, month window": (
            f"/api/v2/score/leaderboard/?reputed_at_from={month_from}&reputed_at_to={month_to}"
        ),
    }
    for name, url in cases.items():
        median = median_ms(lambda u=url: client.get(u, headers=headers), args.runs)
        print(f"{name:<28} median {median:7.1f} ms")


if __name__ == "__main__":
    main()
