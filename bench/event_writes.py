"""What a single adjustment's events cost PostgreSQL, written by triggers (before
migration 0017), by the statements that make the changes (since), or not at all.

`make bench` reads whole processes on a machine whose speed drifts by half within
minutes, so a tenth of a millisecond is lost in it. This takes turns, adjustment by
adjustment, between three databases on this server, one per variant, so that a drift
reaches all three alike:

  triggers    migrated to BEFORE's head (a checkout before 0017) and written with
              BEFORE's statements: the triggers write the events
  statements  migrated to this checkout's head and written with its statements
  none        as `triggers`, with every `events_*` trigger disabled: no event at all

Each turn accepts a request, one statement in its own transaction as the API does,
and applies it with `apply_pending` as a worker does, committed (scenario b's chunks
of one). Every --every turns the sequencer numbers what was written, as the pump would
(in `none` it finds nothing). After every turn tally's own maintenance
(`shared.platform.statistics.maintain`, which beat runs) analyzes what has grown by 50
rows and a tenth, from a connection of its own: the statements' cached generic plans
are made again for the tables' sizes, where plans made for a few rows would scan the
growing requests table on every apply. It prints, per variant, the median ms of the accept and
of the apply, the numbering's ms per adjustment, and the PostgreSQL backend's CPU per
adjustment over the whole run (read from /proc: the server must be on this machine),
and each figure's growth over `none`.

The databases are TALLY_DATABASE_URL's name with `_triggers`, `_statements` and `_none`
appended, made anew (dropped first if there).

Usage: TALLY_DATABASE_URL=... python bench/event_writes.py BEFORE [--turns 3000]
       [--every 60]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import psutil
from common import aligned, calibration_ms  # bench/common.py, beside this script
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from shared.events.log import number_events
from shared.intake.adjustments import Adjustment
from shared.intake.auth import Principal
from shared.intake.users import ensure_tenant
from shared.intake.validation import UserRef
from shared.models import Role
from shared.platform.config import PointsType, load_settings
from shared.platform.db import make_engine
from shared.platform.statistics import maintain

TENANT = "eventwrites"
USERS = 64
VARIANTS = ("triggers", "statements", "none")
HERE = Path(__file__).resolve().parents[1]


def load(tree: Path, module: str, name: str) -> ModuleType:
    """`module` of the checkout `tree`, as a module of its own called `name` (it imports
    this checkout's `shared`, whose names it uses are the same)."""
    spec = importlib.util.spec_from_file_location(name, tree / (module.replace(".", "/") + ".py"))
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def fresh_database(url: str, tree: Path) -> None:
    """Drop and create the database of `url`, and migrate it with `tree`'s migrations."""
    parsed = make_url(url)
    with make_engine(parsed.set(database="postgres").render_as_string(False)).connect() as admin:
        admin = admin.execution_options(isolation_level="AUTOCOMMIT")
        admin.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}"'))
        admin.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    env = os.environ | {"TALLY_DATABASE_URL": url, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-m", "cli", "db", "upgrade"], cwd=tree, env=env,
                   check=True, capture_output=True)  # fmt: skip


@dataclass
class Variant:
    name: str
    accept: ModuleType  # shared.intake.adjustments of its tree
    apply: ModuleType  # shared.ledger.apply of its tree
    connection: Connection
    backend: psutil.Process
    analyzer: Connection  # autocommit, another backend, whose CPU is not counted
    accepts: list[float] = field(default_factory=list)
    applies: list[float] = field(default_factory=list)
    numbering: float = 0.0  # ms, all passes

    def cpu_ms(self) -> float:
        times = self.backend.cpu_times()
        return float(times.user + times.system) * 1000


def provision(connection: Connection) -> tuple[Principal, list[int]]:
    """The tenant's moderator and its users."""
    with Session(bind=connection) as session:
        ensure_tenant(session, TENANT)
        session.commit()
    connection.execute(
        text("INSERT INTO users (tenant_id, username, real_name, email, avatar, description,"
             " role) SELECT :t, 'ew_' || g, '', '', '', '', :role"
             " FROM generate_series(0, :n) g ON CONFLICT DO NOTHING"),
        {"t": TENANT, "n": USERS, "role": Role.USER.value},
    )  # fmt: skip
    ids = connection.scalars(
        text("SELECT id FROM users WHERE tenant_id = :t ORDER BY id"), {"t": TENANT}
    ).all()
    connection.commit()
    return Principal(ids[0], TENANT, "ew_0", "", Role.MODERATOR), list(ids[1:])


def adjust(variant: Variant, principal: Principal, user: int, points: PointsType,
           key: str) -> None:  # fmt: skip
    """Accept one request of 5 points for `user`, then apply it: two transactions."""
    started = time.perf_counter()
    recorded = variant.accept.submit(
        variant.connection, principal, UserRef("user_id", user_id=user),
        Adjustment(None, points.name, 5, comment="event writes"), points, key,
    )  # fmt: skip
    variant.connection.commit()
    accepted = time.perf_counter()
    with Session(bind=variant.connection) as session:
        applied = variant.apply.apply_pending(session, [recorded.account_id], 1)
        session.commit()
    assert len(applied.outcomes) == 1
    variant.accepts.append((accepted - started) * 1000)
    variant.applies.append((time.perf_counter() - accepted) * 1000)


def number(variant: Variant) -> None:
    started = time.perf_counter()
    with Session(bind=variant.connection) as session:
        number_events(session)
        session.commit()
    variant.numbering += (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="a checkout before migration 0017")
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--every", type=int, default=60, help="turns between numberings")
    args = parser.parse_args()
    before = args.before.resolve()
    settings = load_settings()
    points = settings.points_type(settings.default_points_type)
    assert points is not None
    modules = {
        "before": (load(before, "shared.intake.adjustments", "before_adjustments"),
                   load(before, "shared.ledger.apply", "before_apply")),
        "here": (load(HERE, "shared.intake.adjustments", "here_adjustments"),
                 load(HERE, "shared.ledger.apply", "here_apply")),
    }  # fmt: skip
    variants: list[Variant] = []
    principal: Principal | None = None
    users: list[int] = []
    base = make_url(settings.database_url)
    for name in VARIANTS:
        url = base.set(database=f"{base.database}_{name}").render_as_string(False)
        tree = HERE if name == "statements" else before
        fresh_database(url, tree)
        engine = make_engine(url, pool_size=2, pre_ping=False)
        connection = engine.connect()
        analyzer = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if name == "none":
            triggers = connection.execute(
                text("SELECT c.relname, t.tgname FROM pg_trigger t"
                     " JOIN pg_class c ON c.oid = t.tgrelid"
                     " WHERE t.tgname LIKE 'events\\_%' AND c.relname <> 'events'"
                     " AND t.tgparentid = 0")
            ).all()  # fmt: skip
            for table, trigger in triggers:
                connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}"))
        principal, users = provision(connection)
        accept, apply = modules["here" if name == "statements" else "before"]
        pid = connection.scalar(text("SELECT pg_backend_pid()"))
        connection.commit()
        variants.append(Variant(name, accept, apply, connection, psutil.Process(pid), analyzer))
    assert principal is not None
    # Each user's account and first entry, then statistics, in every variant alike.
    for variant, user in itertools.product(variants, users):
        adjust(variant, principal, user, points, f"first-{user}")
    for variant in variants:
        number(variant)
        maintain(variant.analyzer)
        variant.accepts.clear()
        variant.applies.clear()
        variant.numbering = 0.0
    calibration = calibration_ms()
    cpu_before = {v.name: v.cpu_ms() for v in variants}
    for turn in range(args.turns):
        # In turns by rotation: the variant that goes first pays more (about 0.045 ms of
        # CPU an adjustment here, whichever it is), so each goes first as often.
        first = turn % len(variants)
        for variant in variants[first:] + variants[:first]:
            adjust(variant, principal, users[turn % len(users)], points, f"turn-{turn}")
        for variant in variants:
            maintain(variant.analyzer)
        if (turn + 1) % args.every == 0:
            for variant in variants:
                number(variant)
    for variant in variants:
        number(variant)
    cpu = {v.name: (v.cpu_ms() - cpu_before[v.name]) / args.turns for v in variants}
    print(f"calibration (fixed CPU loop): {calibration:.1f} ms; {args.turns} adjustments "
          f"each, numbered every {args.every}")  # fmt: skip
    figures = {
        v.name: (statistics.median(v.accepts), statistics.median(v.applies),
                 v.numbering / args.turns, cpu[v.name])
        for v in variants
    }  # fmt: skip
    none = figures["none"]
    rows: list[tuple[str, ...]] = [
        ("variant", "accept ms", "apply ms", "numbering ms/adj", "PostgreSQL CPU ms/adj",
         "growth: ms (CPU)")
    ]  # fmt: skip
    for name, (accept_ms, apply_ms, numbering_ms, cpu_ms) in figures.items():
        growth = accept_ms + apply_ms + numbering_ms - none[0] - none[1] - none[2]
        rows.append((name, f"{accept_ms:.3f}", f"{apply_ms:.3f}", f"{numbering_ms:.3f}",
                     f"{cpu_ms:.3f}", f"{growth:+.3f} ({cpu_ms - none[3]:+.3f})"))  # fmt: skip
    print(aligned(rows))
    for variant in variants:
        variant.connection.close()
        variant.analyzer.close()


if __name__ == "__main__":
    main()
