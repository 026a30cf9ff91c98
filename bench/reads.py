"""Benchmark the history reads on a large ledger while adjustments flow: `make bench-reads`.

Fills (once) 10,000,000 entries over 100,000 users of one tenant, spread over 730 days
(bench/read_latency.py's set-based fill, with the period totals the applier keeps, then
ANALYZE), then, while a writer process records and applies adjustments at --rate a
second through the real applier (a chunk of rate/10 requests on as many accounts every
0.1 s, so the period totals are written as reads run; the table maintenance runs
before the reads and every TALLY_ANALYZE_INTERVAL seconds, as beat asks for it), prints
p50 / p99 of:
  - the leaderboard's first page of each period,
  - a user's own rank (a random user, week),
  - a balance as of a random moment,
  - a statement page (a random user, a random 30 days),
and the export's rate (every entry as NDJSON, then as CSV, from a `tally api` process
of its own, as curl downloads it into a file) with the RSS growth of the API's
process. A calibration figure (a fixed CPU loop) is printed beside them.

Usage: TALLY_DATABASE_URL=... TALLY_REDIS_URL=... python bench/reads.py [--entries N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

import psutil
from common import TALLY, calibration_ms, percentile, running  # bench/common.py, beside this script
from read_latency import TENANT, fill  # bench/read_latency.py, beside this script
from sqlalchemy import text

from api import create_app
from cli.embedded import free_port
from shared.intake.adjustments import Adjustment, submit
from shared.intake.auth import Principal, create_token
from shared.intake.validation import UserRef
from shared.ledger.apply import apply_pending
from shared.models import Role, User
from shared.platform.config import DEFAULT_POINTS_TYPES, load_settings
from shared.platform.db import autocommit
from shared.platform.resources import Resources
from shared.platform.statistics import maintain


def maintain_now(resources: Resources) -> list[str]:
    """What beat's tally.maintain_tables does (shared.platform.statistics)."""
    with autocommit(resources.engine) as connection:
        return maintain(connection)


def write(
    rate: int,
    users: list[int],
    stop: Event,
    applied: Synchronized[int],
) -> None:
    """Adjustments at `rate` a second through the real accept and apply functions, in a
    process of their own (as the API and the workers are), until `stop` is set; the
    table maintenance every TALLY_ANALYZE_INTERVAL seconds, as beat asks for it."""
    resources = Resources(load_settings())
    maintenance_seconds = resources.settings.analyze_interval
    with resources.sessions.begin() as session:
        admin = session.query(User).filter_by(tenant_id=TENANT, username="bench_admin").one()
        principal = Principal(admin.id, TENANT, admin.username, "", Role.ADMIN)
    points_type = DEFAULT_POINTS_TYPES["reputation"]
    per_tick = max(rate // 10, 1)
    next_tick = time.monotonic()
    next_maintenance = next_tick + maintenance_seconds
    while not stop.is_set():
        if maintenance_seconds and time.monotonic() >= next_maintenance:  # as beat asks
            next_maintenance += maintenance_seconds
            print(f"  (maintenance: {maintain_now(resources)})", flush=True)
        accounts = []
        with resources.sessions.begin() as session:
            for user in random.sample(users, per_tick):
                amount = random.choice([-2, 1, 5, 10])
                adjustment = Adjustment(
                    user_id=user, points_type="reputation", amount=amount, comment="w"
                )
                recorded = submit(session.connection(), principal,
                                  UserRef("user_id", user_id=user), adjustment,
                                  points_type, None)  # fmt: skip
                accounts.append(recorded.account_id)
        with resources.sessions.begin() as session:
            done = len(apply_pending(session, accounts, len(accounts)).outcomes)
        with applied.get_lock():
            applied.value += done
        next_tick += 0.1
        time.sleep(max(next_tick - time.monotonic(), 0))
    resources.close()


# Bytes on disk per row: the heap (with TOAST) and the indexes of every partition.
STORAGE = text("""
    SELECT t.name, count(*) FILTER (WHERE c.relkind = 'r') AS partitions,
           sum(pg_table_size(c.oid)) AS heap, sum(pg_indexes_size(c.oid)) AS indexes
    FROM (VALUES ('ledger_entries'), ('adjustment_requests'), ('events')) AS t(name)
    JOIN pg_class c ON c.oid = CAST(t.name AS regclass)
        OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = CAST(t.name AS regclass))
    GROUP BY t.name ORDER BY t.name
""")


def storage(resources: Resources) -> None:
    """Print the bytes per row of the ledger, the requests and the events."""
    with resources.engine.connect() as connection:
        for name, partitions, heap, indexes in connection.execute(STORAGE):
            count = connection.scalar(text(f"SELECT count(*) FROM {name}")) or 1
            print(f"storage {name:<20} {count:>12,} rows in {partitions:>3} partition(s):"
                  f" heap {heap / count:6.0f} B/row, indexes {indexes / count:6.0f} B/row"
                  f" ({(heap + indexes) / 2**30:.2f} GiB)")  # fmt: skip


def bench_admin(resources: Resources) -> tuple[str, list[int]]:
    """A fresh token of the filled tenant's admin, and the tenant's users."""
    with resources.sessions.begin() as session:
        admin = session.query(User).filter_by(tenant_id=TENANT, username="bench_admin").one()
        session.expunge(admin)
        _, token = create_token(session, admin, "bench")
        accounts = text("SELECT user_id FROM accounts WHERE tenant_id = :tenant")
        return token, list(session.scalars(accounts, {"tenant": TENANT}))


def wal_position(resources: Resources) -> int:
    with resources.engine.connect() as connection:
        return int(connection.scalar(text("SELECT pg_current_wal_lsn() - '0/0'")))


@contextmanager
def api_process() -> Iterator[tuple[str, psutil.Process]]:
    """`tally api` (one process) on a free port of this machine, with this environment's
    settings: its base URL, and the process that serves (granian's worker)."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = {"api": [*TALLY, "api", "--bind", f"127.0.0.1:{port}"]}
    env = os.environ | {"TALLY_API_PROCESSES": "1"}
    with running(command, env, None, f"{base_url}/healthz") as processes:
        (worker,) = psutil.Process(processes["api"].pid).children(recursive=True)
        yield base_url, worker


def export_rate(base_url: str, serving: psutil.Process, headers: dict[str, str], form: str) -> None:
    """Every entry from the export route into a file, as curl downloads it: its rate, and
    how much the serving process's RSS grew. curl, not a Python client: on this machine
    the client shares the two cores with the server, and httpx's parsing of the chunked
    answer took 1.1 µs of CPU per NDJSON line, curl's 0.4 (PERFORMANCE.md)."""
    rss_before = serving.memory_info().rss
    peak = rss_before
    authorization = ["--header", f"Authorization: {headers['Authorization']}"]
    url = f"{base_url}/api/v2/export?format={form}"
    with tempfile.NamedTemporaryFile() as file:
        started = time.perf_counter()
        with subprocess.Popen(["curl", "--silent", "--show-error", "--fail", "--output",
                               file.name, *authorization, url]) as download:  # fmt: skip
            while download.poll() is None:
                peak = max(peak, serving.memory_info().rss)
                time.sleep(0.05)
        seconds = time.perf_counter() - started
        assert download.returncode == 0, f"curl exited with {download.returncode}"
        rows = sum(block.count(b"\n") for block in iter(partial(file.read, 1 << 22), b""))
    label = f"export ({form}, {rows:,} rows)"
    growth = (peak - rss_before) / 2**20
    print(f"{label:<36} {rows / seconds:,.0f} rows/s, API RSS growth {growth:.1f} MB", flush=True)


def percentiles(timings: list[float]) -> str:
    ordered = sorted(timings)
    return f"p50 {statistics.median(ordered):7.1f} ms  p99 {percentile(ordered, 0.99):7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument(
        "--export", default="ndjson,csv",
        help="the export's formats to time, comma-separated (empty: none)",
    )  # fmt: skip
    args = parser.parse_args()

    settings = load_settings()
    resources = Resources(settings)
    fill(resources, args.users, args.entries, args.days)
    token, users = bench_admin(resources)
    print(f"maintenance before the reads: {maintain_now(resources)}")
    print(f"calibration: a fixed CPU loop took {calibration_ms()} ms (bench/common.py)")

    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {token}"}

    def timed(url: str) -> float:
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        return elapsed

    storage(resources)
    wal_before = wal_position(resources)
    spawn = multiprocessing.get_context("spawn")
    stop, applied = spawn.Event(), spawn.Value("q", 0)
    writer = spawn.Process(target=write, args=(args.rate, users, stop, applied), daemon=True)
    writer.start()
    started = time.monotonic()
    now = datetime.now(UTC)

    def moment() -> str:
        then = now - timedelta(seconds=random.uniform(0, args.days * 86400))
        return then.strftime("%Y-%m-%dT%H:%M:%SZ")

    board = "/api/v2/score/leaderboard/?period="
    cases = {
        f"leaderboard, {period}": (lambda p=period: f"{board}{p}")
        for period in ("day", "week", "month", "quarter", "year", "all")
    }
    cases["leaderboard, year, rank, page 50"] = lambda: f"{board}year&ranking=rank&offset=1000"
    cases["own rank, week"] = lambda: (
        f"/api/v2/score/leaderboard/me?period=week&user_id={random.choice(users)}"
    )
    cases["own rank, year, dense_rank"] = lambda: (
        f"/api/v2/score/leaderboard/me?period=year&ranking=dense_rank"
        f"&user_id={random.choice(users)}"
    )
    cases["balance as of a moment"] = lambda: (
        f"/api/v2/users/{random.choice(users)}?as_of={moment()}"
    )

    def month() -> str:
        then = now - timedelta(days=random.uniform(30, args.days))
        ends = then + timedelta(days=30)
        return f"from={then:%Y-%m-%dT%H:%M:%SZ}&to={ends:%Y-%m-%dT%H:%M:%SZ}"

    cases["statement page (30 days)"] = lambda: (
        f"/api/v2/users/{random.choice(users)}/statement?{month()}&limit=50"
    )
    print(f"{'read':<36} {'latency under writes':>36}")
    for name, url in cases.items():
        timings = [timed(url()) for _ in range(args.runs)]
        print(f"{name:<36} {percentiles(timings)}", flush=True)

    reads_took = time.monotonic() - started
    print(f"writes during the reads: {applied.value / reads_took:.0f}/s", flush=True)
    with api_process() as (base_url, serving):
        for form in filter(None, args.export.split(",")):
            export_rate(base_url, serving, headers, form)
    stop.set()
    writer.join()
    elapsed = time.monotonic() - started
    wal = wal_position(resources) - wal_before
    print(f"writes meanwhile: {applied.value:,} applied in {elapsed:.0f} s"
          f" ({applied.value / elapsed:.0f}/s); WAL {wal / 2**20:.0f} MiB,"
          f" {wal / max(applied.value, 1) / 1024:.1f} kB per adjustment (with the"
          f" maintenance's vacuums and the reads' hint bits)")  # fmt: skip
    resources.close()


if __name__ == "__main__":
    main()
