"""What the benchmarks share: tally's processes started and stopped, the stack's
processes by role, their CPU seconds read from /proc, and the aligned table they print."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

ROLES = ("api", "workers", "bulk workers", "postgres", "redis", "peer")
TALLY = [sys.executable, "-m", "cli"]


@contextmanager
def running(
    commands: dict[str, list[str]], env: dict[str, str], folder: Path | None, ready_url: str
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """tally's processes, `name: argv` (each logging to `folder`/name.log, or nowhere),
    once `ready_url` answers 200; stopped (and killed if they linger) afterwards."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in commands.items():
            log_path = folder / f"{name}.log" if folder is not None else Path(os.devnull)
            with log_path.open("ab") as log:
                processes[name] = subprocess.Popen(
                    argv, env=env, stdout=log, stderr=subprocess.STDOUT
                )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"tally's processes did not come up; see {folder or 'their output'}")
            time.sleep(0.2)
        yield processes
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def groups() -> dict[str, list[psutil.Process]]:
    """The stack's processes by role, recognised by their command lines."""
    found: dict[str, list[psutil.Process]] = {role: [] for role in ROLES}
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        name = process.info["name"] or ""
        if name.startswith("postgres") or cmdline.startswith("postgres:"):
            found["postgres"].append(process)
        elif name.startswith("redis-server"):
            found["redis"].append(process)
        elif "peer.py" in cmdline:
            found["peer"].append(process)
        elif _worker(cmdline):
            bulk = ".bulk" in cmdline or "--lanes bulk" in cmdline
            found["bulk workers" if bulk else "workers"].append(process)
        elif (" cli api" in cmdline or "tally api" in cmdline) and "bench" not in cmdline:
            found["api"].append(process)
    return found


def _worker(cmdline: str) -> bool:
    """`tally worker` (Celery in-process) and its pool, an exec'd `celery worker`, or beat
    (counted with the workers: it sends their scheduled tasks)."""
    words = cmdline.split()
    launched = "celery" in cmdline or " cli worker" in cmdline or "tally worker" in cmdline
    return launched and ("worker" in words or "beat" in words)


def cpu_seconds() -> dict[str, float]:
    """CPU seconds per role: each process's own, plus its reaped children's."""
    totals: dict[str, float] = {}
    for role, processes in groups().items():
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system + times.children_user + times.children_system
        totals[role] = total
    return totals


def percentile(ordered: Sequence[float], share: float) -> float:
    """The value at `share` (0.99 for p99) of `ordered`, sorted and not empty: the
    nearest rank at or above it, as the benchmarks print their latencies."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def aligned(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells as right-aligned columns, the first row being the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def calibration_ms() -> float:
    """A fixed CPU loop's time in milliseconds (the best of three): printed beside the
    figures, so that runs on machines or days of different speed can be compared."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        sum(i * i for i in range(2_000_000))
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)
