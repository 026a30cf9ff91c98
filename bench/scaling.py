"""Scaling on one machine: accepted and applied rates, and CPU per adjustment by role, for
1 and 2 API processes and 1 and 2 worker processes, and with the bulk lane busy
(`make bench-scaling`). The measured part of PERFORMANCE.md's capacity model.

For each configuration it starts tally's processes itself on TALLY_DATABASE_URL (a
migrated database) and TALLY_REDIS_URL: `tally api` with TALLY_API_PROCESSES=N, the
interactive worker with --concurrency M, the bulk and events workers, and beat, as the
Procfile does. It then drives bench/adjustments.py's scenario a (Prefer: respond-async,
random user of 1,000, as fast as it goes) for --seconds, waits for the backlog to
drain, and stops them. In the "bulk" configuration a batch of --bulk awards (another
tenant's, posted to /api/v2/score/bulk as the load starts) keeps the bulk lane busy.

It prints, per configuration: accepted/s and applied/s (during the load), p99, the CPU
milliseconds per adjustment of the API, the workers, the bulk workers, PostgreSQL and
Redis, what one core of each does per second at that cost, and PostgreSQL's WAL bytes
and Redis's commands per adjustment; then a calibration figure, and the same as JSON.

Usage: TALLY_DATABASE_URL=... TALLY_REDIS_URL=... python bench/scaling.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
from adjustments import Result, counts, provision, run  # bench/adjustments.py, beside this
from common import TALLY, aligned, calibration_ms, running  # bench/common.py
from redis import Redis
from sqlalchemy import text

from shared.platform.config import load_settings
from shared.platform.resources import Resources

PORT = 18_100
BULK_TENANT = "bench-bulk"
# (API processes, interactive worker processes, bulk lane busy)
CONFIGURATIONS = ((1, 1, False), (2, 1, False), (1, 2, False), (2, 2, False), (2, 2, True))
ROLE_CORES = ("api", "workers", "bulk workers", "postgres", "redis")


@dataclass
class Scaled:
    api_processes: int
    worker_processes: int
    bulk_busy: bool
    load: Result
    wal_bytes_per_adjustment: float
    redis_commands_per_adjustment: float
    bulk_applied_per_s: float

    def per_core(self) -> dict[str, float]:
        """Adjustments one core of each role handles per second at the measured cost."""
        costs = self.load.cpu_ms_per_adjustment
        # A role that did next to nothing (the idle bulk lane) has no meaningful figure.
        return {
            role: round(1000 / costs[role]) if costs[role] >= 0.05 else 0 for role in ROLE_CORES
        }


@contextmanager
def stack(api_processes: int, worker_processes: int, folder: Path) -> Iterator[str]:
    """tally's processes as the Procfile runs them; yields the API's URL."""
    env = os.environ | {"TALLY_API_PROCESSES": str(api_processes), "TALLY_ENV_FILE": os.devnull}
    commands = {
        "api": [*TALLY, "api", "--bind", f"127.0.0.1:{PORT}"],
        "worker": [*TALLY, "worker", "--lanes", "interactive,relay",
                   "--concurrency", str(worker_processes), "--metrics-bind", ""],
        "bulk-worker": [*TALLY, "worker", "--lanes", "bulk", "--concurrency", "2",
                        "--metrics-bind", ""],
        "events-worker": [*TALLY, "worker", "--lanes", "events,webhooks", "--concurrency", "2",
                          "--metrics-bind", ""],
        "beat": [*TALLY, "beat", "--schedule", str(folder / "beat-schedule")],
    }  # fmt: skip
    url = f"http://127.0.0.1:{PORT}"
    with running(commands, env, folder, f"{url}/readyz"):
        time.sleep(2.0)  # the workers' consumers, past the API's readiness
        yield url


def post_bulk(url: str, resources: Resources, awards: int) -> None:
    """One batch of `awards` over 200 users of another tenant than the load's."""
    _, token, users = provision(resources, BULK_TENANT, 200)
    items = [
        {"user_id": users[n % len(users)], "score": 1, "comment": f"award {n}"}
        for n in range(awards)
    ]
    answer = requests.post(
        f"{url}/api/v2/score/bulk",
        data=json.dumps({"items": items}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "Idempotency-Key": "scaling-" + secrets.token_hex(6)},
        timeout=300,
    )  # fmt: skip
    assert answer.status_code == 202, answer.text[:500]


def wal_position(resources: Resources) -> int:
    with resources.engine.connect() as connection:
        return int(connection.scalar(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")))


def redis_commands(redis: Redis) -> int:
    return int(redis.info("stats")["total_commands_processed"])


def measure(
    resources: Resources,
    redis: Redis,
    configuration: tuple[int, int, bool],
    args: argparse.Namespace,
    folder: Path,
) -> Scaled:
    api_processes, worker_processes, bulk = configuration
    _, token, users = provision(resources)
    with stack(api_processes, worker_processes, folder) as url:
        bulk_before = counts(resources, tenant=BULK_TENANT)[0]
        singles_before = counts(resources)[0]
        wal, commands = wal_position(resources), redis_commands(redis)
        poster = None
        if bulk:
            poster = threading.Thread(target=post_bulk, args=(url, resources, args.bulk))
            poster.start()
        started = time.monotonic()
        name = f"{api_processes} api x {worker_processes} worker{' + bulk' if bulk else ''}"
        result = run(resources, name, url=url, token=token, users=users,
                     prefer="respond-async", seconds=args.seconds,
                     connections=args.connections)  # fmt: skip
        elapsed = time.monotonic() - started
        if poster is not None:
            poster.join()
        bulk_applied = counts(resources, tenant=BULK_TENANT)[0] - bulk_before
        adjustments = counts(resources)[0] - singles_before + bulk_applied
        scaled = Scaled(
            api_processes,
            worker_processes,
            bulk,
            result,
            round((wal_position(resources) - wal) / max(adjustments, 1)),
            round((redis_commands(redis) - commands) / max(adjustments, 1), 1),
            round(bulk_applied / elapsed, 1),
        )
    # What the bulk batch still has to do is left to finish before the next configuration.
    return scaled


def table(results: list[Scaled]) -> str:
    rows = [("configuration", "accepted/s", "applied/s", "p99 ms", "bulk applied/s",
             *(f"{role} ms" for role in ROLE_CORES), *(f"{role}/core/s" for role in ROLE_CORES),
             "WAL B/adj", "redis cmd/adj")]  # fmt: skip
    for r in results:
        costs = r.load.cpu_ms_per_adjustment
        per_core = r.per_core()
        rows.append((r.load.scenario, f"{r.load.accepted_per_s:.0f}",
                     f"{r.load.applied_per_s:.0f}", f"{r.load.p99_ms:.0f}",
                     f"{r.bulk_applied_per_s:.0f}", *(f"{costs[role]:.2f}" for role in ROLE_CORES),
                     *(str(per_core[role] or "-") for role in ROLE_CORES),
                     f"{r.wal_bytes_per_adjustment:.0f}",
                     f"{r.redis_commands_per_adjustment:.1f}"))  # fmt: skip
    return aligned(rows)


def wait_for_bulk(resources: Resources) -> None:
    while counts(resources, tenant=BULK_TENANT)[1]:
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--bulk", type=int, default=50_000, help="awards in the busy bulk batch")
    parser.add_argument("--only", default="", help="configurations by index, e.g. 0,3")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `make tools` installs it (Debian package wrk)")
    settings = load_settings()
    resources = Resources(settings)
    redis = settings.redis.client()
    chosen = [int(i) for i in args.only.split(",")] if args.only else range(len(CONFIGURATIONS))
    # Before and after: a machine shared with others may change speed within a run.
    calibrations = [calibration_ms()]
    results = []
    with tempfile.TemporaryDirectory(prefix="tally-scaling-") as name:
        for index in chosen:
            folder = Path(name) / str(index)
            folder.mkdir()
            results.append(measure(resources, redis, CONFIGURATIONS[index], args, folder))
            print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            if CONFIGURATIONS[index][2]:
                with stack(2, 2, folder):  # let the batch finish, not measured
                    wait_for_bulk(resources)
    resources.close()
    calibrations.append(calibration_ms())
    print(table(results))
    print(f"calibration: a fixed CPU loop took {calibrations[0]} ms before, "
          f"{calibrations[1]} ms after (best of 3)")  # fmt: skip
    print(json.dumps({"calibration_ms": calibrations,
                      "results": [asdict(r) | {"per_core": r.per_core()} for r in results]},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
