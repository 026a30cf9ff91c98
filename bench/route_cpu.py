"""What one accept costs in the route itself, against the naive peer's route, and which
of its parts weigh: issue 26, point 4.

`make bench` measures whole processes under load, where the server, the threads and
this machine's costly wake-ups are in every figure and runs differ by ±5 %. This calls
both routes in this process through Flask's test client (no server, no front, no
threads), POST /api/v2/score/ with `Prefer: respond-async` and a new key each time, and
reads this process's CPU per request with getrusage. tally's route runs whole, then
without one part at a time: the Redis wake-up of the workers (`api.accept.dispatch`),
the rate limit's hooks, the metrics' hooks. The variants alternate, each twice, so
that both runs of one share the machine's state with the others. The metrics are kept
in a folder of files, as `tally api` keeps them. Every request is recorded in the
database given (tenant `bench`, as `make bench` provisions it): give it one of its own.

Usage: TALLY_DATABASE_URL=... TALLY_REDIS_URL=... python bench/route_cpu.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import os
import random
import resource
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.platform.config import METRICS_FOLDER_ENV

# Before anything imports prometheus_client's values: metrics in files, as in `tally api`.
if METRICS_FOLDER_ENV not in os.environ:
    os.environ[METRICS_FOLDER_ENV] = tempfile.mkdtemp(prefix="tally-route-cpu-")
    atexit.register(shutil.rmtree, os.environ[METRICS_FOLDER_ENV], ignore_errors=True)

import peer  # bench/peer.py, beside this script
from adjustments import provision
from common import aligned, calibration_ms
from flask import Flask
from sqlalchemy import text

import api.accept
from api import create_app
from shared.platform.config import load_settings
from shared.platform.resources import Resources

WARM_UP = 200
# tally's hooks: the module that registers them and the names of its functions.
HOOKS = {
    "rate limit": ("api.limits", ("_limit", "_count_failures")),
    "metrics": ("api.metrics", ("_start", "_count")),
}


def own_cpu_seconds() -> float:
    """This process's CPU (bench/common.py's cpu_seconds counts the stack's processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def without(app: Flask, part: str) -> Iterator[None]:
    """tally's route without `part` ("" for none) while the block runs."""
    before = list(app.before_request_funcs[None])
    after = list(app.after_request_funcs[None])
    dispatch = api.accept.dispatch
    if part == "dispatch":
        api.accept.dispatch = lambda account_id: None
    elif part in HOOKS:
        module, names = HOOKS[part]

        def kept(hook: Callable[..., object]) -> bool:
            return not (hook.__module__ == module and hook.__name__ in names)

        app.before_request_funcs[None] = [hook for hook in before if kept(hook)]
        app.after_request_funcs[None] = [hook for hook in after if kept(hook)]
        assert len(app.before_request_funcs[None]) + len(app.after_request_funcs[None]) == (
            len(before) + len(after) - 2
        ), f"the {part} hooks were not found"
    try:
        yield
    finally:
        api.accept.dispatch = dispatch
        app.before_request_funcs[None] = before
        app.after_request_funcs[None] = after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per variant and run")
    args = parser.parse_args()
    settings = load_settings()
    resources = Resources(settings)
    _, token, users = provision(resources)
    app = create_app(settings)
    tally_client, peer_client = app.test_client(), peer.app.test_client()
    with peer.engine.begin() as connection:
        connection.execute(text(peer.CREATE))
    keys = (f"route-cpu-{os.getpid()}-{n}" for n in itertools.count())

    def body() -> dict[str, object]:
        """The same body for both routes (bench/adjust.lua's)."""
        return {"user_id": random.choice(users), "score": 5, "comment": "bench"}

    def tally() -> None:
        answer = tally_client.post(
            "/api/v2/score/",
            json=body(),
            headers={"Authorization": f"Bearer {token}", "Prefer": "respond-async",
                     "Idempotency-Key": next(keys)},
        )  # fmt: skip
        assert answer.status_code == 202, answer.data

    def naive() -> None:
        answer = peer_client.post(
            "/api/v2/score/",
            json=body(),
            headers={"Idempotency-Key": next(keys)},
        )
        assert answer.status_code == 201, answer.data

    def per_request(call: Callable[[], None]) -> float:
        for _ in range(WARM_UP):
            call()
        started = own_cpu_seconds()
        for _ in range(args.requests):
            call()
        return (own_cpu_seconds() - started) / args.requests * 1e6

    variants = ["", "dispatch", "rate limit", "metrics", "peer"]
    runs: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(2):
        for variant in variants:
            if variant == "peer":
                runs[variant].append(per_request(naive))
            else:
                with without(app, variant):
                    runs[variant].append(per_request(tally))
    whole = statistics.mean(runs[""])
    rows = [("route", "CPU µs per request, two runs", "mean", "against tally's whole route")]
    names = {"": "tally, whole", "peer": "the naive peer"}
    for variant in variants:
        name = names.get(variant, f"tally without {variant}")
        mean = statistics.mean(runs[variant])
        shown = ", ".join(f"{figure:.0f}" for figure in runs[variant])
        rows.append((name, shown, f"{mean:.0f}", f"{mean - whole:+.0f}"))
    print(aligned(rows))
    print(f"calibration: a fixed CPU loop took {calibration_ms()} ms (bench/common.py)")


if __name__ == "__main__":
    main()
