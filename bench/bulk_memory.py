"""Measure what one bulk request costs the API process in memory, against its body's size.

Builds the API in this process (create_app and its test client) on a fresh database
that it creates on the server of TALLY_DATABASE_URL (migrated, dropped at the end) and
on TALLY_REDIS_URL (under a queue name of its own; its keys are deleted at the end),
and posts to POST /api/v2/score/bulk:

  flood   the body limit (64 MiB) of {"items":[{},{},...]}: far past the item limit, a 400
  json    the item limit (100,000) of realistic awards as {"items": [...]}, near 64 MiB
  ndjson  the same awards as NDJSON
  small   the item limit of short awards (a body of a few MiB: the cost per item shows)

and to POST /api/v2/score/import/ (a dry run):

  import  the body limit of {"csv_string": "<one row>", "pad": [{},{},...]}, a 200

Each case runs twice, each time in a child process of its own after a small warm-up
batch: under tracemalloc (the peak of Python's allocations above those live before the
request: exact, but C buffers such as libpq's are not seen), and without it (the peak
growth of the process's RSS, the kernel's high-water mark reset before the request: what
the operating system sees; Linux only).
Prints, per case, the status, the body's size and items, both growths and their ratio
to the body, as a table and as JSON.

Usage: TALLY_DATABASE_URL=... TALLY_REDIS_URL=... python bench/bulk_memory.py [--case json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import secrets
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import psycopg
from common import aligned, calibration_ms  # bench/common.py, beside this script
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared import models
from shared.intake.auth import create_token
from shared.platform.config import Settings, load_settings
from shared.platform.migrate import upgrade
from shared.platform.resources import Resources

CASES = ("flood", "json", "ndjson", "small", "import")
MODES = ("tracemalloc", "rss")
USERS = 10_000
MiB = 2**20
WORDS = "well done on the spring contest, your answers helped many people; thank you! "


User = tuple[int, str]  # id, username


def awards(users: list[User], count: int, comment_length: int) -> Iterator[dict[str, Any]]:
    """`count` awards over `users` (every fourth by username), each comment of its own."""
    for i in range(count):
        user_id, username = users[i % len(users)]
        who: dict[str, Any] = {"username": username} if i % 4 == 3 else {"user_id": user_id}
        filler = (WORDS * (comment_length // len(WORDS) + 2))[i % len(WORDS) :]
        comment = f"award {i}: {filler}"[:comment_length]
        yield who | {"score": 1 + i % 50, "reputation_context": f"contest|spring|round-{i % 10}",
                     "comment": comment}  # fmt: skip


def comment_length(settings: Settings) -> int:
    """The comment length that brings the item limit of awards near the body limit."""
    per_item = settings.bulk_max_body_bytes * 0.97 / settings.bulk_max_items
    return int(per_item) - len(json.dumps(next(awards([(10**6, "")], 1, 0)))) - 2


def flood_body(settings: Settings, member: bytes) -> tuple[bytes, str, int]:
    """The body limit of {<member>"items":[{},{},...]}."""
    head = b"{" + member + b'"items":['
    count = (settings.bulk_max_body_bytes - len(head) - len(b"{}]}")) // 3 + 1
    return head + b"{}," * (count - 1) + b"{}]}", "application/json", count


def json_body(settings: Settings, users: list[User], length: int) -> tuple[bytes, str, int]:
    items = list(awards(users, settings.bulk_max_items, length))
    return json.dumps({"items": items}).encode(), "application/json", len(items)


def ndjson_body(settings: Settings, users: list[User], length: int) -> tuple[bytes, str, int]:
    lines = [json.dumps(item) for item in awards(users, settings.bulk_max_items, length)]
    return "\n".join(lines).encode(), "application/x-ndjson", len(lines)


def body_of(case: str, settings: Settings, users: list[User]) -> tuple[bytes, str, int]:
    if case == "flood":
        return flood_body(settings, b"")
    if case == "import":
        return flood_body(settings, b'"csv_string": "nobody,,1,contest|a,", "dry_run": true, ')
    if case == "small":
        return json_body(settings, users, 12)
    length = comment_length(settings)
    return (json_body if case == "json" else ndjson_body)(settings, users, length)


def status_bytes(field: str) -> int:
    """A size from /proc/self/status: VmRSS (now) or VmHWM (the peak since its reset)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_rss_peak() -> None:
    """Let VmHWM start again from the RSS of now (Linux: 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class Growth:
    """The peak memory growth, in bytes, of a `with` block: Python allocations, or RSS."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bytes = 0

    def __enter__(self) -> Growth:
        gc.collect()
        if self.mode == "tracemalloc":
            tracemalloc.start()
            self.baseline = tracemalloc.get_traced_memory()[0]
        else:
            reset_rss_peak()
            self.baseline = status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mode == "tracemalloc":
            self.bytes = tracemalloc.get_traced_memory()[1] - self.baseline
            tracemalloc.stop()
        else:
            self.bytes = status_bytes("VmHWM") - self.baseline


def measure(case: str, mode: str, settings: Settings, token: str) -> dict[str, Any]:
    """One case in this (fresh) process: the request's status, time and peak growth."""
    from api import create_app

    app = create_app(settings)
    client = app.test_client()
    with app.extensions["tally"].resources.sessions() as session:
        found = session.execute(text("SELECT id, username FROM users WHERE role = 'user'"))
        users = [(user_id, username) for user_id, username in found]
    headers = {"Authorization": f"Bearer {token}"}

    def post(path: str, body: bytes, content_type: str, key: str) -> Any:
        return client.post(f"/api/v2/score/{path}", data=body, content_type=content_type,
                           headers=headers | {"Idempotency-Key": key})  # fmt: skip

    warm = json.dumps({"items": list(awards(users, 2, 20))}).encode()
    assert post("bulk", warm, "application/json", f"warm-{case}-{mode}").status_code == 202
    body, content_type, items = body_of(case, settings, users)
    path = "import/" if case == "import" else "bulk"
    started = time.perf_counter()
    with Growth(mode) as grown:
        response = post(path, body, content_type, f"{case}-{mode}")
    seconds = time.perf_counter() - started
    # What the answer says, briefly: a batch's total, a problem's first error.
    answer = response.json or {}
    said = answer.get("total", answer.get("total_rows", (answer.get("errors") or [None])[0]))
    app.extensions["tally"].resources.close()
    return {"case": case, "mode": mode, "status": response.status_code, "body": len(body),
            "items": items, "growth": grown.bytes, "seconds": round(seconds, 2),
            "answer": said}  # fmt: skip


# The parent: a database and a tenant for the run, each case in child processes.


def create_database(server_url: str) -> tuple[str, str]:
    url = make_url(server_url)
    name = f"tally_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False), name


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def prepare(resources: Resources) -> str:
    """A tenant with USERS users and a moderator; the moderator's token."""
    with resources.sessions.begin() as session:
        session.add(models.Tenant(id="bench", name="bench"))
        session.flush()
        session.execute(
            text("INSERT INTO users (tenant_id, username, real_name, email, avatar, description,"
                 " role) SELECT 'bench', 'bench_' || g, '', '', '', '', 'user'"
                 " FROM generate_series(1, :count) g"),
            {"count": USERS},
        )  # fmt: skip
        moderator = models.User(tenant_id="bench", username="moderator", role=models.Role.MODERATOR)
        session.add(moderator)
        session.flush()
        _, token = create_token(session, moderator, "bench")
    return token


def clean_redis(resources: Resources, queue: str) -> None:
    """Delete what the run left in Redis: its deployment's keys and its Celery queues."""
    redis = resources.redis
    for pattern in (f"{resources.keys.prefix}:*", f"{queue}*"):
        for key in redis.scan_iter(match=pattern, count=1000):
            redis.delete(key)


def run_child(case: str, mode: str, environ: dict[str, str], token: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", case, "--mode", mode, "--token", token]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{case} ({mode}) failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def table(results: list[dict[str, Any]]) -> str:
    rows = [("case", "status", "body MiB", "items", "python peak MiB", "x body",
             "rss peak MiB", "x body", "seconds")]  # fmt: skip
    for traced, rss in zip(results[::2], results[1::2], strict=True):
        body = traced["body"]
        rows.append((
            traced["case"], str(traced["status"]), f"{body / MiB:.1f}", str(traced["items"]),
            f"{traced['growth'] / MiB:.1f}", f"{traced['growth'] / body:.2f}",
            f"{rss['growth'] / MiB:.1f}", f"{rss['growth'] / body:.2f}", str(rss["seconds"]),
        ))  # fmt: skip
    return aligned(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=CASES, action="append", help="default: all")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.mode, load_settings(), args.token)))
        return
    settings = load_settings()
    url, name = create_database(settings.database_url)
    queue = f"tally_bench_{secrets.token_hex(3)}"
    environ = os.environ | {"TALLY_DATABASE_URL": url, "TALLY_QUEUE_NAME": queue}
    resources = Resources(settings.with_overrides({"database_url": url, "queue_name": queue}))
    try:
        upgrade(url)
        token = prepare(resources)
        results = [run_child(case, mode, environ, token)
                   for case in args.case or CASES for mode in MODES]  # fmt: skip
        clean_redis(resources, queue)
    finally:
        resources.close()
        drop_database(settings.database_url, name)
    print(f"calibration: {calibration_ms()} ms")
    print(table(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
