"""Flower, started as the Procfile and `tally run --flower` start it, shows the timers by name.

Beat runs `tally.expire_lots` and `tally.time_out_holds` every half second; Flower
must list both among the task types it has seen, show their runs on the workers, and
find them registered on the workers it inspects. Once as the Procfile starts it, and
once with `--enable_events=False`: then Flower does not switch the workers' events on
itself (its default, every 5 s), so what it shows is what the workers send on their
own (`worker_send_task_events`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from cli.embedded import free_port
from tests.processes.conftest import Stack
from worker.app import EXPIRE_LOTS_TASK, TIME_OUT_HOLDS_TASK

pytestmark = pytest.mark.processes

TIMERS = {EXPIRE_LOTS_TASK, TIME_OUT_HOLDS_TASK}
# Flower asks the workers to send task events every 5 s (its --enable_events default).
SEEN_LIMIT = 40.0
AUTH = ("ops", "flower-test-password")
FLOWER = (sys.executable, "-m", "cli", "flower")


@pytest.fixture
def stack_env() -> dict[str, str]:
    return {"TALLY_EXPIRY_INTERVAL": "0.5"}


def _start_flower(stack: Stack, *options: str) -> str:
    """Flower as the Procfile runs it, behind basic auth as compose requires; its URL."""
    port = free_port()
    with (stack.log_dir / "flower.log").open("ab") as log:
        stack.processes["flower"] = subprocess.Popen(
            [*FLOWER, *options, "--address=127.0.0.1", f"--port={port}"],
            env=stack.env | {"FLOWER_BASIC_AUTH": ":".join(AUTH), "TMPDIR": str(stack.log_dir)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return f"http://127.0.0.1:{port}"


def _poll(stack: Stack, what: str, probe: Callable[[], Any]) -> Any:
    """probe() until it returns something truthy, within SEEN_LIMIT seconds."""
    deadline = time.monotonic() + SEEN_LIMIT
    last: Any = None
    while time.monotonic() < deadline:
        if stack.processes["flower"].poll() is not None:
            raise AssertionError(f"flower exited\n{stack.logs()}")
        try:
            last = probe()
        except requests.RequestException as error:
            last = error  # not listening yet
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: last seen {last!r}\n{stack.logs()}")


@pytest.mark.parametrize(
    "options", [(), ("--enable_events=False",)], ids=["as-in-procfile", "events-from-workers"]
)
def test_flower_shows_the_expiry_and_hold_timeout_tasks_by_name(
    stack: Stack, options: tuple[str, ...]
) -> None:
    flower = _start_flower(stack, *options)
    http = requests.Session()
    http.auth = AUTH

    def get(path: str, **params: str) -> Any:
        response = http.get(flower + path, params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    _poll(stack, "flower up", lambda: http.get(flower + "/healthcheck", timeout=2).ok)
    assert requests.get(flower + "/api/task/types", timeout=10).status_code == 401

    # The task types Flower has seen in the workers' events.
    _poll(stack, "task types", lambda: TIMERS.issubset(get("/api/task/types")["task-types"]))

    # Their runs, by name, finished on a worker of the stack.
    for name in sorted(TIMERS):
        tasks = _poll(
            stack,
            f"{name} succeeded",
            lambda name=name: {
                uuid: task
                for uuid, task in get("/api/tasks", taskname=name, limit="20").items()
                if task["state"] == "SUCCESS"
            },
        )
        for task in tasks.values():
            assert task["name"] == name
            assert task["worker"].split("@")[0] in ("worker1", "worker2"), task

    # And registered on every worker Flower inspects. Its inspection waits a second for
    # the answers: a busy worker may miss one, and be listed on the next refresh.
    def both_inspected() -> Any:
        workers = get("/api/workers", refresh="1")
        return workers if {n.split("@")[0] for n in workers} == {"worker1", "worker2"} else None

    workers = _poll(stack, "both workers inspected", both_inspected)
    for name, worker in workers.items():
        assert TIMERS.issubset(worker["registered"]), (name, worker["registered"])

    # Prometheus can scrape its task counts (monitoring/prometheus.yml, job flower).
    exposition = http.get(flower + "/metrics", timeout=10).text
    assert f'flower_events_total{{task="{EXPIRE_LOTS_TASK}",type="task-succeeded"' in exposition

    # Flower's lines (Tornado's too) are tally's JSON lines, and the timers ran every half
    # second without a line about them at INFO from beat or a worker.
    assert _json_lines(stack, "flower", every=True)
    for name in ("beat", "worker1", "worker2"):
        routine = [
            line for line in _json_lines(stack, name)
            if line["level"] == "INFO" and any(timer in line["message"] for timer in TIMERS)
        ]  # fmt: skip
        assert routine == [], name


def _json_lines(stack: Stack, name: str, every: bool = False) -> list[dict[str, Any]]:
    """The JSON lines of a process's log, as `service` `name`; `every`: no other lines
    (Celery's banner is plain text)."""
    lines = (stack.log_dir / f"{name}.log").read_text().splitlines()
    if every:
        assert all(line.startswith("{") for line in lines), lines
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    assert {line["service"] for line in parsed} == {name.rstrip("12")}, name
    return parsed
