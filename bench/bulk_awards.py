"""Benchmark bulk awards end to end against a running stack, with single adjustments alongside.

For each user count (default: 200 and 10,000), creates that many users (set-based SQL
on TALLY_DATABASE_URL, in the token's tenant), submits 100,000 awards over them in one
POST /api/v2/score/bulk, and follows the batch's status until every award is final.
Meanwhile one client posts single adjustments (POST /api/v2/score/, waiting for the
201) at a steady 20/s to 100 other users. It prints, per scenario:

  - the time to the 202, and from the 202 until the batch is completed;
  - the API's peak memory growth (RSS of each API process, sampled every 20 ms);
  - the singles' latency (p50/p99, and how many were not a 201) while the batch was applied;
  - CPU seconds per role (API, workers, bulk workers, PostgreSQL, Redis) over the
    accept and the apply phase, read from /proc;

as a table and as JSON. The ledger's size is printed first: the targets are for a
database that already holds 1,000,000 entries (bench/read_latency.py fills one).

Usage: TALLY_DATABASE_URL=... python bench/bulk_awards.py --url http://127.0.0.1:8000 --token T
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from urllib.parse import urljoin

import psutil
import requests
from common import aligned, cpu_seconds, groups  # bench/common.py, beside this script
from sqlalchemy import text

from shared.intake.auth import authenticate
from shared.platform.config import load_settings
from shared.platform.resources import Resources

FINAL = ("completed", "completed_with_rejections")
POLL_SECONDS = 0.1
SINGLE_USERS = 100


class MemoryWatch(threading.Thread):
    """Samples the RSS of every API process; reports the largest growth of any one."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.processes = groups()["api"]
        self.baseline = {p.pid: p.memory_info().rss for p in self.processes}
        self.peak = dict(self.baseline)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for process in self.processes:
                try:
                    rss = process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                self.peak[process.pid] = max(self.peak[process.pid], rss)
            time.sleep(0.02)

    def growth_mb(self) -> float:
        return max((self.peak[pid] - self.baseline[pid]) / 2**20 for pid in self.baseline)


class Singles(threading.Thread):
    """Posts single adjustments at `rate` per second and records when each was sent and took."""

    def __init__(self, url: str, token: str, users: list[int], rate: float) -> None:
        super().__init__(daemon=True)
        self.url = f"{url}/api/v2/score/"
        self.users = users
        self.interval = 1 / rate
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.sent: list[tuple[float, float, int]] = []  # (sent at, seconds, status)
        self.stop = threading.Event()

    def run(self) -> None:
        run = secrets.token_hex(4)
        n = 0
        next_at = time.perf_counter()
        while not self.stop.is_set():
            next_at += self.interval
            body = {"user_id": self.users[n % len(self.users)], "score": 1, "comment": "single"}
            started = time.perf_counter()
            answer = self.http.post(self.url, json=body, timeout=30,
                                    headers={"Idempotency-Key": f"single-{run}-{n}"})  # fmt: skip
            self.sent.append((started, time.perf_counter() - started, answer.status_code))
            n += 1
            time.sleep(max(0.0, next_at - time.perf_counter()))

    def between(self, start: float, end: float) -> list[tuple[float, int]]:
        return [(took, status) for sent, took, status in self.sent if start <= sent <= end]


@dataclass
class Result:
    users: int
    awards: int
    accept_s: float
    apply_s: float
    counts: dict[str, int]
    api_memory_growth_mb: float
    singles_during_apply: int
    singles_p50_ms: float
    singles_p99_ms: float
    singles_not_201: int
    cpu_s_accept: dict[str, float]
    cpu_s_apply: dict[str, float]


def create_users(resources: Resources, count: int, token: str) -> list[int]:
    with resources.sessions.begin() as session:
        principal = authenticate(session, token)
        assert principal is not None, "the token is not valid on TALLY_DATABASE_URL"
        prefix = "bulk_" + secrets.token_hex(3)
        ids = session.scalars(
            text(
                "INSERT INTO users (tenant_id, username, real_name, email, avatar,"
                " description, role) SELECT :tenant, :prefix || '_' || g, 'Bulk ' || g,"
                " '', '', '', 'user' FROM generate_series(1, :count) g RETURNING id"
            ),
            {"tenant": principal.tenant_id, "prefix": prefix, "count": count},
        ).all()
    return list(ids)


def percentile(values: list[float], fraction: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def scenario(
    url: str, token: str, resources: Resources, user_count: int, awards: int, rate: float
) -> Result:
    users = create_users(resources, user_count, token)
    singles = Singles(url, token, create_users(resources, SINGLE_USERS, token), rate)
    items = [
        {"user_id": users[n % len(users)], "score": 1 + n % 10, "comment": f"award {n}"}
        for n in range(awards)
    ]
    body = json.dumps({"items": items, "reputation_context": "contest|bench|bulk"})
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Idempotency-Key": "bench-" + secrets.token_hex(6),
    }
    singles.start()
    time.sleep(1.0)  # the singles are flowing before the batch arrives
    watch = MemoryWatch()
    watch.start()
    cpu_start = cpu_seconds()
    started = time.perf_counter()
    response = requests.post(f"{url}/api/v2/score/bulk", data=body, headers=headers, timeout=300)
    accepted = time.perf_counter()
    cpu_accepted = cpu_seconds()
    assert response.status_code == 202, response.text[:500]
    # Relative unless TALLY_PUBLIC_URL is set (RFC 9110 allows either).
    location = urljoin(url + "/", response.headers["Location"])
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        while (status := http.get(location, timeout=30).json())["status"] not in FINAL:
            time.sleep(POLL_SECONDS)
    done = time.perf_counter()
    cpu_done = cpu_seconds()
    watch.stop.set()
    singles.stop.set()
    singles.join()
    watch.join()
    during = singles.between(accepted, done)
    latencies = [took * 1000 for took, _ in during]
    return Result(
        users=user_count,
        awards=awards,
        accept_s=round(accepted - started, 2),
        apply_s=round(done - accepted, 2),
        counts=status["counts"],
        api_memory_growth_mb=round(watch.growth_mb(), 1),
        singles_during_apply=len(during),
        singles_p50_ms=round(percentile(latencies, 0.50), 1),
        singles_p99_ms=round(percentile(latencies, 0.99), 1),
        singles_not_201=sum(1 for _, code in during if code != 201),
        cpu_s_accept={k: round(cpu_accepted[k] - cpu_start[k], 2) for k in cpu_start},
        cpu_s_apply={k: round(cpu_done[k] - cpu_accepted[k], 2) for k in cpu_start},
    )


def table(results: list[Result]) -> str:
    header = ("users", "202 in s", "applied s", "API MB", "singles", "p50 ms", "p99 ms",
              "not 201", "CPU s accept (api/wrk/bulk/pg/redis)", "CPU s apply")  # fmt: skip
    rows = [header]
    for r in results:
        rows.append((
            str(r.users), f"{r.accept_s:.2f}", f"{r.apply_s:.2f}",
            f"{r.api_memory_growth_mb:.0f}", str(r.singles_during_apply),
            f"{r.singles_p50_ms:.1f}", f"{r.singles_p99_ms:.1f}", str(r.singles_not_201),
            " / ".join(f"{v:.2f}" for v in r.cpu_s_accept.values()),
            " / ".join(f"{v:.2f}" for v in r.cpu_s_apply.values()),
        ))  # fmt: skip
    return aligned(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--users", default="200,10000", help="comma-separated scenarios")
    parser.add_argument("--awards", type=int, default=100_000)
    parser.add_argument("--singles-rate", type=float, default=20.0)
    args = parser.parse_args()

    resources = Resources(load_settings())
    try:
        with resources.engine.connect() as connection:
            entries = connection.scalar(text("SELECT count(*) FROM ledger_entries"))
        print(f"the ledger holds {entries:,} entries")
        results = [
            scenario(args.url, args.token, resources, int(count), args.awards, args.singles_rate)
            for count in args.users.split(",")
        ]
    finally:
        resources.close()
    print(table(results))
    print(json.dumps([asdict(r) for r in results]))


if __name__ == "__main__":
    main()
