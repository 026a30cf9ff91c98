"""Own rank's latency over many calls while adjustments flow and the maintenance vacuums.

`make bench-reads` gives each read 400 calls, so its p99 is the fourth slowest call and
moves with whatever else the machine does in those seconds. This runs only own rank
(the week's board, a random user), for --seconds, beside bench/reads.py's writer at
--rate a second, and starts one `VACUUM (ANALYZE) period_totals` (what the maintenance
does once a hundredth of its rows are dead) --vacuum-at seconds in, optionally throttled
as autovacuum is (--vacuum-cost-delay, in ms). It prints p50 / p90 / p99 / max of every
call, of those during the vacuum, and of the rest, beside a calibration figure.

Usage, on a database that `make bench-reads` filled:
TALLY_DATABASE_URL=... TALLY_REDIS_URL=... python bench/own_rank.py [--seconds 150]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import threading
import time

import reads  # bench/reads.py, beside this script
from common import calibration_ms, percentile  # bench/common.py, beside this script
from sqlalchemy import text

from api import create_app
from shared.platform.config import load_settings
from shared.platform.db import autocommit
from shared.platform.resources import Resources


def summary(label: str, timings: list[float]) -> str:
    ordered = sorted(timings)
    if not ordered:
        return f"{label:<16} no calls"
    return (
        f"{label:<16} {len(ordered):>6} calls  p50 {statistics.median(ordered):6.1f}"
        f"  p90 {percentile(ordered, 0.9):6.1f}  p99 {percentile(ordered, 0.99):6.1f}"
        f"  max {ordered[-1]:6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--vacuum-at", type=float, default=60)
    parser.add_argument("--vacuum-cost-delay", type=float, default=0.0)
    args = parser.parse_args()

    settings = load_settings()
    resources = Resources(settings)
    token, users = reads.bench_admin(resources)
    print(f"calibration: a fixed CPU loop took {calibration_ms()} ms (bench/common.py)")
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {token}"}

    spawn = multiprocessing.get_context("spawn")
    stop, applied = spawn.Event(), spawn.Value("q", 0)
    # bench/reads.py's writer without its own maintenance: the one vacuum is this script's.
    writer = spawn.Process(
        target=reads.write, args=(args.rate, users, stop, applied, float("inf")), daemon=True
    )
    writer.start()
    time.sleep(5)  # the writer under way

    vacuumed: list[float] = []

    def vacuum() -> None:
        with autocommit(resources.engine) as connection:
            connection.execute(text(f"SET vacuum_cost_delay = '{args.vacuum_cost_delay}ms'"))
            began = time.monotonic()
            connection.execute(text("VACUUM (ANALYZE) period_totals"))
            vacuumed[:] = [began, time.monotonic()]
            connection.execute(text("RESET vacuum_cost_delay"))

    started, applied_before = time.monotonic(), applied.value
    timer = threading.Timer(args.vacuum_at, vacuum)
    timer.start()
    calls: list[tuple[float, float]] = []
    while time.monotonic() - started < args.seconds or timer.is_alive():
        user = random.choice(users)
        called = time.monotonic()
        response = client.get(
            f"/api/v2/score/leaderboard/me?period=week&user_id={user}", headers=headers
        )
        calls.append((called, (time.monotonic() - called) * 1000))
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
    elapsed = time.monotonic() - started
    stop.set()
    writer.join()
    began, ended = vacuumed
    writes = (applied.value - applied_before) / elapsed
    print(f"writes: {writes:.0f}/s; the vacuum took {ended - began:.1f} s"
          f" (vacuum_cost_delay {args.vacuum_cost_delay:g} ms)")  # fmt: skip
    print(summary("every call", [ms for _, ms in calls]))
    print(summary("during vacuum", [ms for at, ms in calls if began <= at <= ended]))
    print(summary("the rest", [ms for at, ms in calls if not began <= at <= ended]))
    resources.close()


if __name__ == "__main__":
    main()
