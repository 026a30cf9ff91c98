"""Benchmark single adjustments against a running stack (`make bench`).

It provisions, in the database the stack uses (TALLY_DATABASE_URL), a tenant `bench`
with a moderator, a fresh token and 1,000 users, then drives POST /api/v2/score/
with wrk and bench/adjust.lua (a unique Idempotency-Key per request) in four
scenarios:

  a  Prefer: respond-async, random user of 1,000, as fast as it goes
  b  default (wait for the 201), random user of 1,000
  c  respond-async, every request to one hot user
  d  respond-async at half of (a)'s rate, paced, for latency
  e  respond-async at 500/s (--webhook-rate), paced, with one webhook endpoint (every
     event type, or --webhook-types) on a receiver on loopback (bench/receiver.py): also
     the delivery lag, from the event's transaction to its arrival, p50/p95/p99 (the
     stack needs TALLY_WEBHOOK_ALLOW_PRIVATE=true)
  n  the naive synchronous peer (bench/peer.py: a Flask route that validates the body
     and inserts one row, under granian like tally's API) with b's load: the ratio of
     tally's CPU per adjustment (a, b) to the peer's is printed

For each it prints accepted/s, applied/s (during the load), the backlog when the
load stops and the time it takes to drain, latency p50/p95/p99, and the CPU
milliseconds per adjustment of the API, the workers, PostgreSQL and Redis (read
from /proc over the load and the drain, divided by the adjustments accepted) —
as a table and as JSON.

Usage: TALLY_DATABASE_URL=... python bench/adjustments.py [--url URL] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from common import aligned, calibration_ms, cpu_seconds, percentile  # bench/common.py
from receiver import Receiver  # bench/receiver.py
from sqlalchemy import select, text

from shared.events.webhooks import EndpointInput, create_endpoint
from shared.intake.adjustments import create_account
from shared.intake.auth import create_token
from shared.intake.users import ensure_tenant
from shared.models import Role, User
from shared.platform.config import load_settings
from shared.platform.resources import Resources

TENANT = "bench"
USERS = 1000
LUA = Path(__file__).with_name("adjust.lua")
DRAIN_LIMIT = 120.0
WEBHOOK_RATE = 500
RECEIVER_PORT = 18_998
PEER_PORT = 18_997
PEER = Path(__file__).with_name("peer.py")


@dataclass
class Lag:
    """Scenario e's webhook deliveries: how many, and commit-to-receiver lag."""

    events: int
    delivered: int
    duplicates: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Result:
    scenario: str
    connections: int
    accepted_per_s: float
    answers: dict[str, int]
    applied_per_s: float
    backlog_at_stop: int
    drain_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms_per_adjustment: dict[str, float]
    webhooks: Lag | None = None


def provision(
    resources: Resources, tenant: str = TENANT, users: int = USERS
) -> tuple[int, str, list[int]]:
    """The moderator's id, a fresh token of it and the ids of `users` users of `tenant`
    (made the first time, each with its account of the default points type).

    Then the tables the accept path reads are analyzed, with their rows in them: from an
    `accounts` analyzed empty, the accept statement's plan (made once per connection)
    walked every account for the one it wanted until the maintenance analyzed the table
    again (PERFORMANCE.md, "PostgreSQL's share, statement by statement").
    """
    with resources.sessions.begin() as session:
        ensure_tenant(session, tenant)
        moderator = session.scalars(
            select(User).where(User.tenant_id == tenant, User.username == "bench_moderator")
        ).one_or_none()
        if moderator is None:
            moderator = User(tenant_id=tenant, username="bench_moderator", role=Role.MODERATOR)
            session.add(moderator)
            session.flush()
        _, token = create_token(session, moderator, "bench")
        session.execute(
            text(
                "INSERT INTO users (tenant_id, username, real_name, email, avatar, description,"
                " role) SELECT :t, 'bench_' || g, '', '', '', '', 'user'"
                " FROM generate_series(1, :n) g ON CONFLICT DO NOTHING"
            ),
            {"t": tenant, "n": users},
        )
        ids = session.scalars(
            text("SELECT id FROM users WHERE tenant_id = :t AND username LIKE 'bench\\_%'"
                 " AND role = 'user' ORDER BY id LIMIT :n"),
            {"t": tenant, "n": users},
        ).all()  # fmt: skip
        settings = resources.settings
        points_type = settings.points_types[settings.default_points_type]
        connection = session.connection()
        for user_id in ids:
            create_account(connection, tenant, user_id, points_type)
    with resources.engine.begin() as connection:
        connection.execute(text("ANALYZE users, accounts, adjustment_requests, tokens"))
    return moderator.id, token, list(ids)


def last_request_id(resources: Resources) -> int:
    with resources.engine.connect() as connection:
        return int(connection.scalar(text("SELECT COALESCE(max(id), 0) FROM adjustment_requests")))


def counts(resources: Resources, after_id: int = 0, tenant: str = TENANT) -> tuple[int, int]:
    """(completed or rejected, still pending) requests of `tenant` past `after_id`.

    Counting only the scenario's own rows keeps this quick (it is polled every 20 ms
    to time the drain) however large the database has grown.
    """
    with resources.engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT count(*) FILTER (WHERE status IN ('completed', 'rejected')),"
                " count(*) FILTER (WHERE status IN ('queued', 'processing'))"
                " FROM adjustment_requests WHERE tenant_id = :t AND id > :after"
            ),
            {"t": tenant, "after": after_id},
        ).one()
    return row[0], row[1]


def wrk(url: str, seconds: int, connections: int, env: dict[str, str]) -> dict[str, Any]:
    threads = min(2, connections)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(LUA), url]  # fmt: skip
    output = subprocess.run(
        command, env=os.environ | env, capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH_JSON "))
    parsed: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    return parsed


def run(
    resources: Resources,
    scenario: str,
    *,
    url: str,
    token: str,
    users: list[int],
    prefer: str,
    seconds: int,
    connections: int,
    delay_ms: int = 0,
) -> Result:
    _, pending = counts(resources)
    if pending:
        sys.exit(f"{pending} bench requests are still pending; let the stack drain first")
    after_id = last_request_id(resources)
    done_before = 0
    cpu_before = cpu_seconds()
    env = {
        "BENCH_TOKEN": token,
        "BENCH_USERS": ",".join(map(str, users)),
        "BENCH_PREFER": prefer,
        "BENCH_RUN": f"{scenario}-{secrets.token_hex(4)}",
        "BENCH_DELAY": str(delay_ms),
    }
    load = wrk(url, seconds, connections, env)
    stopped = time.monotonic()
    done_at_stop, backlog_at_stop = counts(resources, after_id)
    backlog = backlog_at_stop
    while backlog:
        if time.monotonic() - stopped > DRAIN_LIMIT:
            sys.exit(f"scenario {scenario}: {backlog} requests still pending after {DRAIN_LIMIT} s")
        time.sleep(0.02)
        _, backlog = counts(resources, after_id)
    drain = time.monotonic() - stopped
    cpu_after = cpu_seconds()
    done_after, _ = counts(resources, after_id)
    answers = {str(status): int(n) for status, n in load["statuses"].items()}
    accepted = answers.get("201", 0) + answers.get("202", 0)
    adjustments = done_after - done_before
    duration = float(load["seconds"])
    return Result(
        scenario=scenario,
        connections=connections,
        accepted_per_s=round(accepted / duration, 1),
        answers=answers,
        applied_per_s=round((done_at_stop - done_before) / duration, 1),
        backlog_at_stop=backlog_at_stop,
        drain_s=round(drain, 2) if backlog_at_stop else 0.0,
        p50_ms=float(load["p50_ms"]),
        p95_ms=float(load["p95_ms"]),
        p99_ms=float(load["p99_ms"]),
        cpu_ms_per_adjustment={
            role: round(1000 * (cpu_after[role] - cpu_before[role]) / max(adjustments, 1), 3)
            for role in cpu_after
        },
    )


def run_peer(resources: Resources, *, seconds: int, connections: int, users: list[int]) -> Result:
    """Scenario n: b's load on the naive peer, started here and stopped after."""
    peer = subprocess.Popen([sys.executable, PEER.name, "--port", str(PEER_PORT)],
                            cwd=PEER.parent, stdout=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{PEER_PORT}"
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["curl", "-s", "-o", "/dev/null", url]).returncode != 0:
            if time.monotonic() > deadline or peer.poll() is not None:
                sys.exit("the peer did not start")
            time.sleep(0.2)
        rows = text("SELECT count(*) FROM bench_peer_adjustments")
        with resources.engine.connect() as connection:
            before = int(connection.scalar(rows))
        cpu_before = cpu_seconds()
        env = {"BENCH_TOKEN": "none", "BENCH_USERS": ",".join(map(str, users)),
               "BENCH_PREFER": "", "BENCH_RUN": f"n-{secrets.token_hex(4)}",
               "BENCH_DELAY": "0"}  # fmt: skip
        load = wrk(url, seconds, connections, env)
        cpu_after = cpu_seconds()
        with resources.engine.connect() as connection:
            inserted = int(connection.scalar(rows)) - before
    finally:
        peer.terminate()
        peer.wait(timeout=30)
        with resources.engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS bench_peer_adjustments"))
    answers = {str(status): int(n) for status, n in load["statuses"].items()}
    duration = float(load["seconds"])
    return Result(
        scenario="n", connections=connections,
        accepted_per_s=round(answers.get("201", 0) / duration, 1), answers=answers,
        applied_per_s=round(inserted / duration, 1), backlog_at_stop=0, drain_s=0.0,
        p50_ms=float(load["p50_ms"]), p95_ms=float(load["p95_ms"]),
        p99_ms=float(load["p99_ms"]),
        cpu_ms_per_adjustment={
            role: round(1000 * (cpu_after[role] - cpu_before[role]) / max(inserted, 1), 3)
            for role in cpu_after
        },
    )  # fmt: skip


def with_webhook(
    resources: Resources, moderator_id: int, types: list[str], run_load: Any
) -> Result:
    """Run the load with one endpoint (of these types; none: every type) on a loopback
    receiver; add the lag."""
    receiver = Receiver(RECEIVER_PORT).start()
    with resources.sessions.begin() as session:
        first_event = session.scalar(text("SELECT COALESCE(max(seq), 0) FROM events"))
        wanted = EndpointInput(url=receiver.url, types=types)
        endpoint = create_endpoint(session, TENANT, moderator_id, wanted, allow_private=True)
        endpoint_id = endpoint.id
    try:
        result: Result = run_load()
        deadline = time.monotonic() + DRAIN_LIMIT
        while time.monotonic() < deadline:
            with resources.sessions() as session:
                waiting = session.scalar(
                    text("""
                        SELECT (SELECT count(*) FROM events WHERE seq > :seq AND id IS NULL)
                             + (SELECT count(*) FROM webhook_deliveries
                                WHERE endpoint_id = :endpoint AND status = 'pending')
                    """),
                    {"seq": first_event, "endpoint": endpoint_id},
                )
            if not waiting:
                break
            time.sleep(0.5)
        time.sleep(1)  # the fan-out of the last pump
        with resources.sessions() as session:
            events = session.scalar(
                text("SELECT count(*) FROM events WHERE seq > :seq AND tenant_id = :tenant"
                     " AND (cardinality(CAST(:types AS text[])) = 0 OR type = ANY(:types))"),
                {"seq": first_event, "tenant": TENANT, "types": types},
            )  # fmt: skip
    finally:
        records = receiver.stop()
        with resources.sessions.begin() as session:
            session.execute(
                text("UPDATE webhook_endpoints SET status = 'disabled' WHERE id = :id"),
                {"id": endpoint_id},
            )
    if events and not records:
        with resources.sessions() as session:
            error = session.scalar(
                text("SELECT last_error FROM webhook_deliveries WHERE endpoint_id = :endpoint"
                     " AND last_error IS NOT NULL ORDER BY last_attempt_at DESC LIMIT 1"),
                {"endpoint": endpoint_id},
            )  # fmt: skip
        sys.exit(f"scenario e: none of {events} events reached the receiver"
                 f" ({error or 'no attempt recorded'}); a stack that delivers to loopback"
                 " runs with TALLY_WEBHOOK_ALLOW_PRIVATE=true")  # fmt: skip
    lags = sorted(max(0.0, arrived - occurred) * 1000 for _, occurred, arrived in records)
    ids = [webhook_id for webhook_id, _, _ in records]

    def at(share: float) -> float:
        return round(percentile(lags, share), 1) if lags else 0.0

    result.webhooks = Lag(
        events=int(events or 0), delivered=len(set(ids)), duplicates=len(ids) - len(set(ids)),
        p50_ms=at(0.50), p95_ms=at(0.95), p99_ms=at(0.99),
        max_ms=round(lags[-1], 1) if lags else 0.0,
    )  # fmt: skip
    return result


def table(results: list[Result]) -> str:
    header = ("scenario", "conns", "accepted/s", "applied/s", "backlog", "drain s", "p50 ms",
              "p95 ms", "p99 ms", "cpu ms: api", "workers", "postgres", "redis", "peer",
              "total")  # fmt: skip
    rows: list[tuple[str, ...]] = [header]
    for r in results:
        cpu = r.cpu_ms_per_adjustment
        rows.append((
            r.scenario, str(r.connections), f"{r.accepted_per_s:.0f}", f"{r.applied_per_s:.0f}",
            str(r.backlog_at_stop), f"{r.drain_s:.2f}", f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}",
            f"{r.p99_ms:.1f}", f"{cpu['api']:.2f}", f"{cpu['workers'] + cpu['bulk workers']:.2f}",
            f"{cpu['postgres']:.2f}", f"{cpu['redis']:.2f}", f"{cpu['peer']:.2f}",
            f"{sum(cpu.values()):.2f}",
        ))  # fmt: skip
    return aligned(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TALLY_BENCH_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--scenarios", default="abcd")
    parser.add_argument("--webhook-rate", type=int, default=WEBHOOK_RATE,
                        help="scenario e's adjustments per second")  # fmt: skip
    parser.add_argument("--webhook-types", default="",
                        help="scenario e's endpoint's event types, comma-separated (default:"
                             " every type)")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `make tools` installs it (Debian package wrk)")

    resources = Resources(load_settings())
    moderator_id, token, users = provision(resources)
    common = {"url": args.url, "token": token, "seconds": args.seconds}
    results: list[Result] = []
    for scenario in args.scenarios:
        if scenario == "a":
            result = run(resources, "a", users=users, prefer="respond-async",
                         connections=args.connections, **common)  # fmt: skip
        elif scenario == "b":
            result = run(resources, "b", users=users, prefer="",
                         connections=args.connections, **common)  # fmt: skip
        elif scenario == "c":
            result = run(resources, "c", users=users[:1], prefer="respond-async",
                         connections=args.connections, **common)  # fmt: skip
        elif scenario == "n":
            result = run_peer(resources, seconds=args.seconds, connections=args.connections,
                              users=users)  # fmt: skip
        elif scenario == "e":
            # Each connection waits so that all together send --webhook-rate a second.
            delay = round(1000 * args.connections / args.webhook_rate)
            paced = partial(run, resources, "e", users=users, prefer="respond-async",
                            connections=args.connections, delay_ms=delay, **common)  # fmt: skip
            types = [name for name in args.webhook_types.split(",") if name]
            result = with_webhook(resources, moderator_id, types, paced)
        else:
            a_rate = next((r.accepted_per_s for r in results if r.scenario == "a"), 400.0)
            # Each connection waits so that all together send half of (a)'s rate.
            delay = round(1000 * args.connections / (a_rate / 2))
            result = run(resources, "d", users=users, prefer="respond-async",
                         connections=args.connections, delay_ms=delay, **common)  # fmt: skip
        results.append(result)
        print(table([result]).splitlines()[-1], file=sys.stderr, flush=True)
    resources.close()
    calibration = calibration_ms()
    print(table(results))
    for r in results:
        if r.webhooks is not None:
            w = r.webhooks
            print(f"webhooks ({r.scenario}): {w.events} events, {w.delivered} delivered "
                  f"({w.duplicates} twice); lag commit to receiver p50 {w.p50_ms} ms, "
                  f"p95 {w.p95_ms} ms, p99 {w.p99_ms} ms, max {w.max_ms} ms")  # fmt: skip
    peer = next((r for r in results if r.scenario == "n"), None)
    for r in results:
        if peer is not None and r is not peer:
            # While the peer runs, tally's stack idles: its own processes' CPU is left out.
            ours = sum(r.cpu_ms_per_adjustment.values())
            theirs = peer.cpu_ms_per_adjustment["peer"] + peer.cpu_ms_per_adjustment["postgres"]
            print(f"CPU per adjustment, tally ({r.scenario}) / the naive peer (n):"
                  f" {ours:.2f} / {theirs:.2f} ms = {ours / theirs:.1f}x")  # fmt: skip
    print(f"calibration: a fixed CPU loop took {calibration} ms (best of 3)")
    print(json.dumps({"calibration_ms": calibration, "results": [asdict(r) for r in results]},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
