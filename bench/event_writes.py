"""What writing a single adjustment's events costs in the accept and in the apply:
the triggers of migration 0009 against the statements of migration 0017.

`make bench` reads whole processes on a machine whose speed drifts by half within
minutes, so a tenth of a millisecond is lost in it. This runs the two statements that
write the events of a single adjustment (the accept's; the chunk's write of one
request, as scenario b applies them) in three variants, taking turns request by
request on three connections to one database, so that a drift reaches all three alike:

  triggers    the statements of a checkout before 0017 (BEFORE), whose events the
              triggers write
  statements  this checkout's statements, which write the events themselves
  none        BEFORE's statements with the triggers silent: no event at all

The database is migrated to BEFORE's head (0016, triggers and all). The three event
triggers are set to fire only in sessions with `session_replication_role = replica`
(the triggers connection's); the foreign keys' triggers fire in every session. Each
turn accepts a request and applies one queued request of another account in a
transaction that is rolled back. It prints, per variant, the median time of each
statement (the client's clock around it, the triggers included) and the PostgreSQL
backend's CPU per turn (read from /proc over all turns: the database must be on this
machine); and the differences to `none`.

Usage: TALLY_DATABASE_URL=... python bench/event_writes.py BEFORE [--turns 3000]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
from common import aligned, calibration_ms  # bench/common.py, beside this script
from sqlalchemy import Connection, text

from shared.intake.adjustments import Adjustment
from shared.intake.auth import Principal
from shared.intake.validation import UserRef
from shared.models import ReputationType, Role, new_ulid
from shared.platform.config import load_settings
from shared.platform.db import make_engine

TENANT = "eventwrites"
ACCOUNTS = 64
EVENT_TRIGGERS = {
    "adjustment_requests": ("events_requests_accepted", "events_requests_final"),
    "ledger_entries": ("events_entries",),
}
VARIANTS = ("triggers", "statements", "none")


def load(tree: Path, module: str, name: str) -> ModuleType:
    """`module` of the checkout `tree`, as a module of its own called `name` (it imports
    this checkout's `shared`, whose names it uses are the same)."""
    spec = importlib.util.spec_from_file_location(name, tree / (module.replace(".", "/") + ".py"))
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def migrate_before(url: str, before: Path) -> None:
    """Migrate to BEFORE's head, in a process of BEFORE's own (its migrations)."""
    import subprocess

    subprocess.run(
        [sys.executable, "-m", "cli", "db", "upgrade"], cwd=before, check=True,
        env={"TALLY_DATABASE_URL": url, "TALLY_ENV_FILE": "/dev/null", "PYTHONPATH": str(before),
             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def provision(connection: Connection) -> tuple[Principal, list[int]]:
    """The tenant's moderator and its users."""
    connection.execute(
        text("INSERT INTO tenants (id, name) VALUES (:t, :t) ON CONFLICT DO NOTHING"),
        {"t": TENANT},
    )
    connection.execute(
        text("INSERT INTO users (tenant_id, username, real_name, email, avatar, description,"
             " role) SELECT :t, 'ew_' || g, '', '', '', '', :role"
             " FROM generate_series(0, :n) g ON CONFLICT DO NOTHING"),
        {"t": TENANT, "n": ACCOUNTS, "role": Role.USER.value},
    )  # fmt: skip
    ids = connection.scalars(
        text("SELECT id FROM users WHERE tenant_id = :t ORDER BY id"), {"t": TENANT}
    ).all()
    return Principal(ids[0], TENANT, "ew_0", "", Role.MODERATOR), list(ids[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="a checkout before migration 0017")
    parser.add_argument("--turns", type=int, default=3000)
    args = parser.parse_args()
    settings = load_settings()
    url = settings.database_url
    migrate_before(url, args.before.resolve())
    old_accept = load(args.before, "shared.intake.adjustments", "before_adjustments")
    old_apply = load(args.before, "shared.ledger.apply", "before_apply")
    new_accept = load(Path(__file__).parents[1], "shared.intake.adjustments", "this_adjustments")
    new_apply = load(Path(__file__).parents[1], "shared.ledger.apply", "this_apply")
    statements = {
        "triggers": (old_accept, old_apply),
        "statements": (new_accept, new_apply),
        "none": (old_accept, old_apply),
    }
    engine = make_engine(url, pool_size=4, pre_ping=False)
    with engine.begin() as connection:
        # The foreign keys' checks of the tables the two statements write.
        checks = connection.execute(
            text("SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgisinternal"
                 " AND tgrelid IN ('adjustment_requests'::regclass, 'period_totals'::regclass)")
        ).all()  # fmt: skip
        for table, trigger in checks:
            connection.execute(text(f'ALTER TABLE {table} ENABLE ALWAYS TRIGGER "{trigger}"'))
        for table, triggers in EVENT_TRIGGERS.items():
            for trigger in triggers:
                connection.execute(text(f"ALTER TABLE {table} ENABLE REPLICA TRIGGER {trigger}"))
        principal, users = provision(connection)
    points = settings.points_type(settings.default_points_type)
    assert points is not None
    # One queued request of each user, accepted for good (the turns apply them, rolled back).
    with engine.begin() as connection:
        for user in users:
            new_accept.submit(connection, principal, UserRef("user_id", user_id=user),
                              Adjustment(None, points.name, 5, comment="queued"), points,
                              f"queued-{user}")  # fmt: skip
        queued = connection.execute(
            text("SELECT r.id, a.balance FROM adjustment_requests r"
                 " JOIN accounts a ON a.id = r.account_id"
                 " WHERE r.tenant_id = :t AND r.status = 'queued' ORDER BY r.id"),
            {"t": TENANT},
        ).all()  # fmt: skip
        connection.execute(text("ANALYZE"))
    connections = {variant: engine.connect() for variant in VARIANTS}
    connections["triggers"].execute(text("SET session_replication_role = replica"))
    connections["triggers"].commit()
    backends = {
        variant: psutil.Process(c.scalar(text("SELECT pg_backend_pid()")))
        for variant, c in connections.items()
    }
    for c in connections.values():
        c.commit()
    timings: dict[str, dict[str, list[float]]] = {v: {"accept": [], "apply": []} for v in VARIANTS}
    cpu_before = {v: sum(backends[v].cpu_times()[:2]) for v in VARIANTS}
    calibration = calibration_ms()
    for turn, variant in itertools.product(range(args.turns), VARIANTS):
        accept_module, apply_module = statements[variant]
        connection = connections[variant]
        user = users[turn % len(users)]
        request_id, balance = queued[(turn + 1) % len(queued)]
        started = time.perf_counter()
        accept_module.submit(connection, principal, UserRef("user_id", user_id=user),
                             Adjustment(None, points.name, 5, comment="turn"), points,
                             f"turn-{variant}-{turn}")  # fmt: skip
        accepted = time.perf_counter()
        connection.execute(
            apply_module.WRITE_ENTRIES, write_values(request_id, balance, apply_module.PERIODS)
        )
        applied = time.perf_counter()
        rollback(connection)
        timings[variant]["accept"].append((accepted - started) * 1000)
        timings[variant]["apply"].append((applied - accepted) * 1000)
    cpu = {v: (sum(backends[v].cpu_times()[:2]) - cpu_before[v]) * 1000 / args.turns
           for v in VARIANTS}  # fmt: skip
    print(f"calibration (fixed CPU loop): {calibration:.1f} ms; {args.turns} turns")
    medians = {v: {s: statistics.median(timings[v][s]) for s in ("accept", "apply")}
               for v in VARIANTS}  # fmt: skip
    rows: list[tuple[str, ...]] = [
        ("variant", "accept ms", "apply ms", "PostgreSQL CPU ms per turn", "over none (ms)")
    ]
    for variant in VARIANTS:
        extra = (medians[variant]["accept"] - medians["none"]["accept"]
                 + medians[variant]["apply"] - medians["none"]["apply"])  # fmt: skip
        rows.append((variant, f"{medians[variant]['accept']:.3f}",
                     f"{medians[variant]['apply']:.3f}", f"{cpu[variant]:.3f}",
                     f"{extra:+.3f} (CPU {cpu[variant] - cpu['none']:+.3f})"))  # fmt: skip
    print(aligned(rows))
    for c in connections.values():
        c.close()


def rollback(connection: Connection) -> None:
    """Rolled back through libpq: psycopg's own rollback() forgets the connection's
    prepared statements, which the API's and the workers' connections, whose
    transactions commit, keep (bench/apply_chunks.py)."""
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.pgconn.exec_(b"ROLLBACK")
    connection.rollback()


def write_values(request_id: int, balance: int, periods: list[str]) -> dict[str, Any]:
    """WRITE_ENTRIES' parameters for one request of 5 points applied alone."""
    return {
        "ids": [request_id], "ulids": [new_ulid()], "before": [balance], "amounts": [5],
        "frozen": [0], "expired": [0], "cut": [0], "capped": [0], "reported": [True],
        "at": datetime.now(UTC), "periods": periods,
        "reversal": int(ReputationType.REVERSAL), "manual": int(ReputationType.MANUAL),
    }  # fmt: skip


if __name__ == "__main__":
    main()
