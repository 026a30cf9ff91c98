"""Benchmark bulk awards end to end against a running stack.

Creates 10,000 users (set-based SQL on TALLY_DATABASE_URL, in the token's tenant),
submits 100,000 awards in one POST /api/v2/score/bulk, and prints the time to the
202, the time until the batch is completed, and the API's peak memory growth
(RSS of the API processes, sampled every 20 ms).

Usage: TALLY_DATABASE_URL=... python bench/bulk_awards.py --url http://127.0.0.1:8000 --token T
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
import time

import psutil
import requests
from sqlalchemy import text

from shared.auth import authenticate
from shared.config import load_settings
from shared.resources import Resources


def api_processes() -> list[psutil.Process]:
    """`tally api` (or `python -m cli api`) and the worker processes it forked."""
    return [
        p for p in psutil.process_iter(["cmdline"])
        if " api" in " ".join(p.info["cmdline"] or [])
        and any(part.endswith(("tally", "cli")) for part in p.info["cmdline"] or [])
    ]  # fmt: skip


class MemoryWatch(threading.Thread):
    """Samples the RSS of every API process; reports the largest growth of any one."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.processes = api_processes()
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


def create_users(count: int, token: str) -> list[int]:
    resources = Resources(load_settings())
    try:
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
    finally:
        resources.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--awards", type=int, default=100_000)
    args = parser.parse_args()

    users = create_users(args.users, args.token)
    items = [
        {"user_id": users[n % len(users)], "score": 1 + n % 10, "comment": f"award {n}"}
        for n in range(args.awards)
    ]
    body = json.dumps({"items": items, "reputation_context": "contest|bench|bulk"})
    headers = {
        "Authorization": f"Bearer {args.token}",
        "Content-Type": "application/json",
        "Idempotency-Key": "bench-" + secrets.token_hex(6),
    }
    watch = MemoryWatch()
    watch.start()
    started = time.perf_counter()
    response = requests.post(f"{args.url}/api/v2/score/bulk", data=body, headers=headers,
                             timeout=300)  # fmt: skip
    accepted = time.perf_counter()
    assert response.status_code == 202, response.text[:500]
    location = response.headers["Location"]
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {args.token}"
        while True:
            status = http.get(location, timeout=30).json()
            if status["status"] in ("completed", "completed_with_rejections"):
                break
            time.sleep(0.05)
    done = time.perf_counter()
    watch.stop.set()
    watch.join()
    print(f"{args.awards} awards over {len(users)} users")
    print(f"accepted (202) in        {accepted - started:6.2f} s")
    print(f"completed after the 202  {done - accepted:6.2f} s  ({status['counts']})")
    print(f"API peak memory growth   {watch.growth_mb():6.1f} MB")


if __name__ == "__main__":
    main()
