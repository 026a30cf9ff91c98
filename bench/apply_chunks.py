"""What the applier and the accept spend, and how much of it in PL/pgSQL triggers.

The end-to-end benchmark (bench/adjustments.py) gives CPU per adjustment of the whole
stack, whose noise on a saturated 2-core machine is of the size of the event log's
cost. This one isolates the applier: in a tenant of its own it accepts queued requests
(the accept path, one per account), then applies chunks of 1, 4, 16 and 64 of them with
`apply_pending` again and again, each in a transaction that is rolled back (so every
run applies the same requests). It prints the median time of a chunk, per adjustment,
the part spent in PL/pgSQL trigger functions (read from `pg_stat_xact_user_functions`
with `track_functions = 'pl'`, a superuser's setting as the suite's and the
benchmarks' databases give) and the CPU of the connection's PostgreSQL backend per
chunk (read from /proc over all the runs of a size: the database must be on this
machine). Then it accepts --accepts more requests, one statement each as the API
does, and prints the same for one accept. Run it on two commits to compare.

Usage: TALLY_DATABASE_URL=... python bench/apply_chunks.py [--runs 200] [--warm]
       [--accepts 3000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import psutil
from common import aligned, calibration_ms  # bench/common.py, beside this script
from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.intake.adjustments import Adjustment, submit
from shared.intake.auth import Principal
from shared.intake.users import ensure_tenant
from shared.intake.validation import UserRef
from shared.ledger.apply import apply_pending
from shared.models import Role
from shared.platform.config import load_settings
from shared.platform.db import autocommit
from shared.platform.migrate import upgrade
from shared.platform.resources import Resources

TENANT = "applybench"
SIZES = (1, 4, 16, 64)


def provision(
    resources: Resources, count: int, warm: bool
) -> tuple[list[str], Callable[[str], None]]:
    """The accounts of `count` users, each with one queued adjustment of 5 points, and a
    function that queues one more for each user (its argument names the round); `warm`:
    each has had one applied first, so that applying updates its period rows (as on an
    account active today) rather than inserting them."""
    with resources.sessions.begin() as session:
        ensure_tenant(session, TENANT)
        session.execute(
            text(
                "INSERT INTO users (tenant_id, username, real_name, email, avatar, description,"
                " role) SELECT :t, 'apply_' || g, '', '', '', '', :role"
                " FROM generate_series(0, :n) g ON CONFLICT DO NOTHING"
            ),
            {"t": TENANT, "n": count, "role": Role.USER.value},
        )
        ids = session.scalars(
            text("SELECT id FROM users WHERE tenant_id = :t ORDER BY id LIMIT :n"),
            {"t": TENANT, "n": count + 1},
        ).all()
    principal = Principal(ids[0], TENANT, "apply_0", "", Role.MODERATOR)
    points = resources.settings.points_type(resources.settings.default_points_type)
    assert points is not None

    def accept(round: str) -> None:
        with autocommit(resources.engine) as connection:
            for user_id in ids[1:]:
                adjustment = Adjustment(None, points.name, 5, comment="apply bench")
                target = UserRef("user_id", user_id=user_id)
                key = f"apply-bench-{round}-{user_id}"
                submit(connection, principal, target, adjustment, points, key)

    for round in ("first", "timed") if warm else ("timed",):
        accept(round)
        if round == "first":
            with resources.sessions.begin() as session:
                accounts = session.scalars(
                    text("SELECT DISTINCT account_id FROM adjustment_requests"
                         " WHERE tenant_id = :t AND status = 'queued'"),
                    {"t": TENANT},
                ).all()  # fmt: skip
                apply_pending(session, accounts, len(accounts))
    with resources.engine.connect() as connection:
        accounts = connection.scalars(
            text("SELECT account_id FROM adjustment_requests WHERE tenant_id = :t"
                 " AND status = 'queued' ORDER BY account_id LIMIT :n"),
            {"t": TENANT, "n": count},
        ).all()  # fmt: skip
    assert len(accounts) == count, "the tenant's requests were applied: drop its rows first"
    return list(accounts), accept


IN_TRIGGERS = text("SELECT COALESCE(sum(total_time), 0) FROM pg_stat_xact_user_functions")


def backend(resources: Resources) -> psutil.Process:
    """The PostgreSQL backend of the pool's connection (the pool keeps one: the runs
    take it in turn)."""
    with resources.engine.connect() as connection:
        return psutil.Process(connection.scalar(text("SELECT pg_backend_pid()")))


def cpu_ms(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system) * 1000


def time_chunk(resources: Resources, accounts: list[str]) -> tuple[float, float]:
    """Milliseconds to apply one chunk of these accounts' requests (rolled back after),
    and of them in PL/pgSQL functions."""
    with resources.engine.connect() as connection:
        connection.execute(text("SET LOCAL track_functions = 'pl'"))
        # Counts not yet flushed to the cumulative view, earlier transactions' included.
        in_triggers = -float(connection.scalar(IN_TRIGGERS))
        with Session(bind=connection) as session:
            started = time.perf_counter()
            applied = apply_pending(session, accounts, len(accounts))
            session.flush()
            elapsed = time.perf_counter() - started
        assert len(applied.outcomes) == len(accounts)
        in_triggers += float(connection.scalar(IN_TRIGGERS))
        # Rolled back through libpq: psycopg's own rollback() forgets the connection's
        # prepared statements, which a worker's connection, whose transactions commit,
        # keeps (it prepares a statement on its fifth run). Then SQLAlchemy's rollback
        # finds the connection idle.
        raw = connection.connection.driver_connection
        assert raw is not None
        raw.pgconn.exec_(b"ROLLBACK")
        connection.rollback()
    return elapsed * 1000, in_triggers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--accepts", type=int, default=3000)
    parser.add_argument(
        "--warm", action="store_true",
        help="the accounts have an entry already: their period rows are updated",
    )  # fmt: skip
    args = parser.parse_args()
    settings = load_settings()
    upgrade(settings.database_url)
    resources = Resources(settings)
    accounts, accept = provision(resources, max(SIZES), args.warm)
    server = backend(resources)
    print(f"calibration (fixed CPU loop): {calibration_ms():.1f} ms")
    header = ("chunk", "ms per chunk", "of it in triggers", "ms per adjustment",
              "PostgreSQL CPU ms per chunk")  # fmt: skip
    rows: list[tuple[str, ...]] = [header]
    figures = []
    for size in SIZES:
        before = cpu_ms(server)
        runs = [time_chunk(resources, accounts[:size]) for _ in range(args.runs)]
        backend_ms = (cpu_ms(server) - before) / args.runs
        chunk_ms = statistics.median(run[0] for run in runs)
        trigger_ms = statistics.median(run[1] for run in runs)
        figures.append({"chunk": size, "chunk_ms": chunk_ms, "in_triggers_ms": trigger_ms,
                        "backend_cpu_ms": backend_ms})  # fmt: skip
        rows.append((str(size), f"{chunk_ms:.3f}", f"{trigger_ms:.3f}", f"{chunk_ms / size:.3f}",
                     f"{backend_ms:.3f}"))  # fmt: skip
    # Accepts: one statement each, on the pool's one connection as the timed runs had it.
    rounds = max(1, args.accepts // len(accounts))
    before, started = cpu_ms(server), time.perf_counter()
    for round in range(rounds):
        accept(f"accepts-{round}")
    count = rounds * len(accounts)
    accept_ms = (time.perf_counter() - started) * 1000 / count
    accept_backend_ms = (cpu_ms(server) - before) / count
    figures.append({"accepts": count, "accept_ms": accept_ms,
                    "backend_cpu_ms": accept_backend_ms})  # fmt: skip
    rows.append((f"accept ({count})", f"{accept_ms:.3f}", "", "", f"{accept_backend_ms:.3f}"))
    print(aligned(rows))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
