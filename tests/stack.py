"""A stack of real processes (the API, Celery workers, beat) that a test starts and stops."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from cli.embedded import free_port

STARTUP_TIMEOUT = 60.0


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]]
    log_dir: Path
    # Each worker's own /metrics URL, by name.
    worker_metrics: dict[str, str] = field(default_factory=dict)

    def start(self, name: str, *args: str, wrapper: tuple[str, ...] = ()) -> None:
        """`tally ARGS` as process `name`, run by `wrapper` if any (`unshare ...`, say)."""
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "cli", *args],
                # Temporary files (the metrics folders a kill -9 leaves) stay with the test.
                env=self.env | {"TMPDIR": str(self.log_dir)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, name: str) -> None:
        stop_group(self.processes.pop(name), timeout=20)

    def stop_all(self, timeout: float = 20) -> None:
        """Stop every process at once: SIGTERM to each group, then wait for all (SIGKILL
        to a group still there after `timeout`). One by one, a stack took 4-5 s."""
        processes = [self.processes.pop(name) for name in list(self.processes)]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):  # it has ended on its own
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def start_api(self) -> None:
        """`tally api` as process "api", on the port of `base_url`."""
        self.start("api", "api", "--bind", self.base_url.removeprefix("http://"))

    def start_beat(self) -> None:
        """`tally beat` as process "beat", its schedule file beside the logs."""
        self.start("beat", "beat", "--schedule", str(self.log_dir / "beat-schedule"))

    def start_worker(
        self, name: str, lanes: str | None = None, wrapper: tuple[str, ...] = ()
    ) -> None:
        """A worker for these lanes (`tally worker`'s default: every lane)."""
        metrics_bind = f"127.0.0.1:{free_port()}"
        self.worker_metrics[name] = f"http://{metrics_bind}/metrics"
        self.start(
            name,
            "worker",
            *(["--lanes", lanes] if lanes else []),
            "--metrics-bind",
            metrics_bind,
            "--concurrency",
            "1",
            "--hostname",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            wrapper=wrapper,
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


@contextmanager
def running_stack(
    log_dir: Path,
    database_url: str,
    redis_url: str,
    env: Mapping[str, str] = {},
    workers: Sequence[str] = (),
) -> Iterator[Stack]:
    """The API, beat and these workers (of every lane) on these servers, with a queue name
    of their own and these TALLY_* settings besides; up when yielded, all stopped after."""
    port = free_port()
    stack = Stack(
        f"http://127.0.0.1:{port}",
        os.environ
        | {
            "TALLY_DATABASE_URL": database_url,
            "TALLY_REDIS_URL": redis_url,
            "TALLY_QUEUE_NAME": "tally-stack-" + secrets.token_hex(4),
        }
        | dict(env),
        {},
        log_dir,
    )
    stack.start_api()
    stack.start_beat()
    for name in workers:
        stack.start_worker(name)
    try:
        wait_until_up(stack)
        yield stack
    finally:
        stack.stop_all()


def newcomer_tally(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`tally ARGS` run in `cwd` with no TALLY_* variable but those of `env`, as in a
    newcomer's second terminal."""
    bare = {name: value for name, value in os.environ.items() if not name.startswith("TALLY_")}
    repository = str(Path(__file__).resolve().parents[1])
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env=bare | {"PYTHONPATH": repository} | dict(env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM to the process and all it started; SIGKILL after `timeout` seconds."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_until_up(stack: Stack) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{stack.logs()}")
        try:
            if requests.get(stack.base_url + "/healthz", timeout=1).ok:
                return
        except requests.RequestException:
            pass  # not listening yet, or still booting
        time.sleep(0.1)
    raise RuntimeError(f"the API did not come up:\n{stack.logs()}")


def signal_process(stack: Stack, name: str, sig: signal.Signals) -> None:
    """Send `sig` to the main process of `name` only (not its children)."""
    os.kill(stack.processes[name].pid, sig)


def kill_group(stack: Stack, name: str) -> None:
    """kill -9 the process and every child it forked (a Celery worker and its pool)."""
    process = stack.processes.pop(name)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
