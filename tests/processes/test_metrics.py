"""/metrics in every launch mode: each process group serves what its own processes counted.

The API's processes add up on the API's /metrics, a worker's pool processes on that
worker's own /metrics (TALLY_METRICS_BIND); no two groups share a folder, so nothing
is counted twice or lost (see shared.platform.metrics). Docker Compose is checked in
tests/test_deployment.py: it gives each container its own folder the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from cli.embedded import free_port
from shared.models import Role
from shared.platform.db import make_engine, make_session_factory
from shared.platform.metrics import API_SERIES, WORKER_SERIES
from shared.platform.migrate import upgrade
from tests.chaos.services import ThrowawayPostgres, ThrowawayRedis
from tests.conftest import Services
from tests.factories import Factory
from tests.stack import Stack, newcomer_tally, stop_group, wait_until_up

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[2]
POST_ROUTE = {"route": "/api/v2/score/", "method": "POST"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


# What the API's /metrics counts once per accepted POST.
COUNTED_PER_POST = [
    ("tally_http_requests_total", {**POST_ROUTE, "status": "201"}),
    ("tally_http_request_duration_seconds_count", POST_ROUTE),
    ("tally_adjustments_accepted_total", {}),
]


def moved(before: Samples, after: Samples) -> dict[str, float]:
    """How much each of COUNTED_PER_POST grew between two scrapes."""
    return {
        name: value(after, name, **labels) - value(before, name, **labels)
        for name, labels in COUNTED_PER_POST
    }


def eventually_applied(urls: list[str], expected: float, timeout: float = 30) -> float:
    """The applied counter summed over these workers, once it reaches `expected`.

    A worker serves /metrics once it is ready: until then its URL may refuse.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            total = sum(value(scrape(url), "tally_adjustments_applied_total") for url in urls)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            total = -1
        if total >= expected or time.monotonic() > deadline:
            return total
        time.sleep(0.2)


def post(base_url: str, token: str, body: dict[str, object]) -> None:
    response = requests.post(
        base_url + "/api/v2/score/",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text


def sample_names(series: tuple[MetricWrapperBase, ...]) -> set[str]:
    """Every name a scrape may show of these series."""
    suffixes = ("", "_total", "_count", "_sum", "_bucket", "_created")
    families = [family.name for metric in series for family in metric.describe()]
    return {name + suffix for name in families for suffix in suffixes}


worker_only = sample_names(WORKER_SERIES)
api_only = sample_names(API_SERIES)


def assert_group_processes(samples: Samples, at_least: int) -> None:
    """The group's CPU and memory: all its processes summed, not one process's."""
    assert value(samples, "tally_group_processes") >= at_least
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > at_least * 20e6
    assert value(samples, "process_start_time_seconds") > time.time() - 3600


@pytest.fixture
def stack_database(own_database: str) -> str:
    """A database of the stack's own: the workers' counts below are of every request they
    apply, and a request another test left pending on the suite's database was applied
    and counted too (13 where 12 were posted, once in CI)."""
    return own_database


def test_bare_api_and_workers_each_serve_their_own_counts(
    stack: Stack, stack_factory: Factory
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    api_metrics = stack.base_url + "/metrics"
    workers = list(stack.worker_metrics.values())
    assert len(workers) == 2
    before = scrape(api_metrics)
    applied_before = eventually_applied(workers, 0)
    for n in range(12):
        post(stack.base_url, caller.token, {"user_id": user.id, "score": 1, "comment": f"n{n}"})
    # Scrape several times: whichever API process answers, the sums agree.
    for after in [scrape(api_metrics) for _ in range(4)]:
        assert moved(before, after) == {name: 12 for name, _ in COUNTED_PER_POST}
        assert value(after, "tally_outbox_backlog") == 0
        assert ("tally_queue_depth", (("queue", stack.env["TALLY_QUEUE_NAME"]),)) in after
        # The API applies nothing, and says nothing of what the workers count (not even 0).
        assert names(after) & worker_only == set()
        assert_group_processes(after, at_least=2)  # granian's server and its processes
    assert eventually_applied(workers, applied_before + 12) == applied_before + 12
    for url in workers:
        samples = scrape(url)
        assert names(samples) & api_only == set()
        assert_group_processes(samples, at_least=2)  # the worker and its pool
    # Every process logs JSON lines; none of them carries the token.
    logs = stack.logs()
    assert caller.token not in logs
    assert '"adjustment_ids"' in logs and '"adjustment_id"' in logs


def test_scaled_workers_whose_pids_repeat_add_up_like_compose_containers(
    stack_without_workers: Stack, stack_factory: Factory
) -> None:
    """`docker compose up --scale worker=3`, without Docker: each worker in a PID namespace.

    Each worker is PID 1 of its own namespace and its pool processes 2, 3, ... in
    every one, as in containers; their samples must still add up exactly.
    """
    stack = stack_without_workers
    own_pids = ("unshare", "--pid", "--fork", "--mount-proc")
    for n in range(3):
        stack.start_worker(f"container{n}", "interactive,relay", wrapper=own_pids)
    workers = list(stack.worker_metrics.values())
    caller = stack_factory.caller(Role.MODERATOR)
    users = [stack_factory.user() for _ in range(6)]
    applied_before = eventually_applied(workers, 0)
    for n in range(30):
        post(stack.base_url, caller.token, {"user_id": users[n % 6].id, "score": 1, "comment": "c"})
    assert eventually_applied(workers, applied_before + 30) == applied_before + 30
    shares = [value(scrape(url), "tally_adjustments_applied_total") for url in workers]
    assert sum(shares) == applied_before + 30 and max(shares) < sum(shares), shares


@pytest.fixture
def launch_factory(own_database: str, services: Services) -> Iterator[Factory]:
    """Users and tokens in the launched stack's database: a fresh one, so that no request
    another test left pending reaches the stack's relay and its workers' counts."""
    engine = make_engine(own_database, prepared_statements=services.prepared_statements)
    yield Factory(make_session_factory(engine))
    engine.dispose()


@pytest.fixture
def launch_env(own_database: str, services: Services, tmp_path: Path) -> dict[str, str]:
    """The environment of a whole launched stack, on the test servers (a database of its
    own) and a queue of its own."""
    env = os.environ | {
        "TMPDIR": str(tmp_path),
        "TALLY_DATABASE_URL": own_database,
        "TALLY_REDIS_URL": services.redis_url,
        "TALLY_QUEUE_NAME": "tally-launch-" + secrets.token_hex(4),
        # The console scripts of this environment, as a user's shell would find them.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for inherited in ("TALLY_BIND", "TALLY_METRICS_BIND", "PORT", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(inherited, None)
    return env


@contextmanager
def _launch(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop_group(process, timeout=30)


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-4000:]
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer:\n{log.read_text()[-4000:]}")


def _one_adjustment_is_counted(api: str, workers: list[str], token: str, user: str) -> None:
    """One POST: the API's /metrics counts it and a worker's /metrics counts its apply."""
    before = scrape(api + "/metrics")
    applied_before = eventually_applied(workers, 0)
    post(api, token, {"username": user, "score": 3, "comment": "launch mode"})
    assert moved(before, scrape(api + "/metrics")) == {name: 1 for name, _ in COUNTED_PER_POST}
    assert eventually_applied(workers, applied_before + 1) == applied_before + 1


def test_procfile_under_honcho(
    launch_env: dict[str, str], launch_factory: Factory, tmp_path: Path
) -> None:
    caller = launch_factory.caller(Role.MODERATOR)
    user = launch_factory.user()
    base = free_port(3, 100)  # honcho: api on base, worker base+100, bulk-worker base+200
    log = tmp_path / "honcho.log"
    argv = [sys.executable, "-m", "honcho", "start", "-f", "Procfile", "-p", str(base),
            "api", "worker", "bulk-worker", "beat"]  # fmt: skip
    with _launch(argv, launch_env, log) as honcho:
        api = f"http://127.0.0.1:{base}"
        workers = [f"http://127.0.0.1:{base + step}/metrics" for step in (100, 200)]
        for url in [api + "/readyz", *workers]:
            _wait_for(url, honcho, log)
        _one_adjustment_is_counted(api, workers, caller.token, user.username)


@pytest.mark.parametrize("servers", ["given", "embedded"])
def test_tally_run(
    launch_env: dict[str, str], launch_factory: Factory, tmp_path: Path, servers: str
) -> None:
    """`tally run` (`make run`) on the test servers, and on a machine with no services: with
    no TALLY_DATABASE_URL and TALLY_REDIS_URL it starts embedded PostgreSQL and Redis in its
    data folder, and an adjustment goes through them. Only there does it make demo users and
    a demo admin token; on given servers it says how to make a token instead.

    Issue 24: in another terminal (no TALLY_* variable set), every `tally` command run in
    the folder finds the stack through the `.tally/env` that `tally run` keeps while it
    runs: the database commands on both, and with the demo token the API commands too."""
    given = ("TALLY_DATABASE_URL", "TALLY_REDIS_URL")
    env = launch_env
    if servers == "embedded":
        env = {name: value for name, value in launch_env.items() if name not in given}
    port, metrics_port = free_port(), free_port(2)  # worker, bulk worker
    data = tmp_path / ".tally"
    log = tmp_path / "run.log"
    argv = [sys.executable, "-m", "cli", "run", "--data-dir", str(data), "--port", str(port),
            "--metrics-port", str(metrics_port)]  # fmt: skip
    with _launch(argv, env, log) as run:
        api = f"http://127.0.0.1:{port}"
        workers = [f"http://127.0.0.1:{metrics_port + step}/metrics" for step in (0, 1)]
        for url in [api + "/readyz", *workers]:
            _wait_for(url, run, log)
        if servers == "embedded":
            token, username = (data / "demo-token").read_text().strip(), "mario.rossi"
        else:
            assert not (data / "demo-token").exists()
            assert "tally tokens create --username" in log.read_text()
            token, username = launch_factory.caller().token, launch_factory.user().username
        _one_adjustment_is_counted(api, workers, token, username)
        _commands_find_the_stack(tmp_path, embedded=servers == "embedded")
    assert not (data / "env").exists()  # gone with the stack
    started_embedded = "starting embedded PostgreSQL and Redis" in log.read_text()
    assert started_embedded == (servers == "embedded"), log.read_text()[-2000:]
    assert ("demo admin token" in log.read_text()) == (servers == "embedded")


def _commands_find_the_stack(folder: Path, embedded: bool) -> None:
    def tally(*args: str) -> dict[str, Any]:
        result = newcomer_tally(*args, "--json", cwd=folder)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout) if result.stdout else {}

    user = tally("users", "create", "--username", "second.terminal." + secrets.token_hex(3))
    assert tally("tokens", "create", "--username", user["username"])["token"].startswith("tly_")
    if not embedded:
        return  # the suite's shared database: other tests' requests are in its counts
    assert tally("reconcile")["violations"] == []
    deadline = time.monotonic() + 30
    while (status := newcomer_tally("status", "--json", cwd=folder)).returncode != 0:
        assert status.returncode == 1 and time.monotonic() < deadline, status.stderr
        time.sleep(0.5)  # a worker that has not answered the broadcast yet
    # With the demo admin's token, which `tally run` saved with the URLs:
    adjusted = tally("points", "adjust", str(user["id"]), "5", "--reason", "welcome")
    assert adjusted["account"]["balance"] == 5
    (points,) = tally("points", "balance", str(user["id"]))["balances"]
    assert points["balance"] == 5
    awards = folder / "awards.csv"
    awards.write_text(f"{user['username']},,3,contest|demo,first award\n")
    assert tally("award", str(awards), "--key", "demo-award")["counts"]["completed"] == 1
    exported = newcomer_tally("export", "--format", "csv", cwd=folder)
    assert exported.returncode == 0 and exported.stdout.startswith("id,"), exported.stderr
    frozen = tally("accounts", "freeze", "--username", user["username"])["accounts"]
    assert {account["status"] for account in frozen} == {"frozen"}
    tally("accounts", "unfreeze", "--username", user["username"])
    assert tally("webhooks", "list") == {"endpoints": []}
    assert any(t["username"] == user["username"] for t in tally("tokens", "list"))


def test_metrics_answer_while_postgresql_or_redis_is_down(tmp_path: Path) -> None:
    postgres = ThrowawayPostgres(tmp_path / "pg")
    redis = ThrowawayRedis(tmp_path)
    postgres.start()
    redis.start()
    upgrade(postgres.url)
    port = free_port()
    env = os.environ | {
        "TALLY_DATABASE_URL": postgres.url,
        "TALLY_REDIS_URL": redis.url,
        "TALLY_API_PROCESSES": "1",
    }
    stack = Stack(f"http://127.0.0.1:{port}", env, {}, tmp_path)
    stack.start("api", "api", "--bind", f"127.0.0.1:{port}")
    url = stack.base_url + "/metrics"
    scrapes = {"route": "/metrics", "method": "GET", "status": "200"}
    try:
        wait_until_up(stack)
        healthy = scrape(url)
        assert value(healthy, "tally_backlog_source_up", source="postgresql") == 1
        assert value(healthy, "tally_backlog_source_up", source="redis") == 1
        assert {"tally_outbox_backlog", "tally_queue_depth"} <= names(healthy)

        postgres.stop()
        without_postgres = scrape(url)
        assert value(without_postgres, "tally_backlog_source_up", source="postgresql") == 0
        assert value(without_postgres, "tally_backlog_source_up", source="redis") == 1
        assert "tally_outbox_backlog" not in names(without_postgres)
        assert "tally_queue_depth" in names(without_postgres)
        # The rest is served: the scrapes so far were counted.
        assert value(without_postgres, "tally_http_requests_total", **scrapes) >= 1

        postgres.start()
        redis.kill()
        without_redis = scrape(url)
        assert value(without_redis, "tally_backlog_source_up", source="postgresql") == 1
        assert value(without_redis, "tally_backlog_source_up", source="redis") == 0
        assert "tally_queue_depth" not in names(without_redis)
        assert "tally_outbox_backlog" in names(without_redis)
        assert value(without_redis, "tally_http_requests_total", **scrapes) >= 2
    finally:
        stack.stop_all()
        redis.kill()
        postgres.stop()
