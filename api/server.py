"""Serving the API with granian: request heads are read in its Rust I/O loop, not by a thread.

A gthread server hands a connection to a Python thread as soon as one byte arrives,
so a few hundred clients that trickle their headers take every thread (and one
huge request line takes CPU and memory). granian reads the request head on its own
event loop, with a deadline and a size cap, and only a complete request reaches one
of the WSGI threads; on SIGTERM it stops accepting and lets requests in flight finish.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

WSGI_TARGET = "api.wsgi:app"
# Read by prometheus_client when it is imported (not importable here for that reason).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A client has this long to send its request line and headers.
HEADER_READ_TIMEOUT_MS = 10_000
# The request line and headers together; a longer head is refused before Python sees it.
MAX_HEAD_BYTES = 64 * 1024
# A worker told to stop finishes its requests for up to this long, then is killed.
GRACEFUL_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class ServerOptions:
    """Where and how wide to serve: address, processes and threads per process."""

    host: str
    port: int
    processes: int
    threads: int
    access_log: bool = True

    @classmethod
    def from_environment(cls, bind: str | None = None) -> ServerOptions:
        host, _, port = (bind or os.environ.get("TALLY_BIND", "127.0.0.1:8000")).rpartition(":")
        return cls(
            host=host.strip("[]") or "127.0.0.1",
            port=int(port),
            processes=int(os.environ.get("TALLY_API_PROCESSES", "2")),
            threads=int(os.environ.get("TALLY_API_THREADS", "16")),
            access_log=os.environ.get("TALLY_ACCESS_LOG", "true").lower() in ("1", "true"),
        )


def _logging_config() -> dict[str, Any]:
    """granian's loggers and tally's, one JSON object per line on stdout."""
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "filters": ["context"],
        "stream": "ext://sys.stdout",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "shared.logs.ContextFilter", "service": "api"}},
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            }
        },
        "handlers": {"stdout": handler},
        "root": {"handlers": ["stdout"], "level": "INFO"},
        "loggers": {
            "_granian": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        },
    }


def serve(options: ServerOptions) -> None:
    """Run the API in the foreground until SIGINT or SIGTERM."""
    # Every worker process writes its metrics to this folder; it must be set before
    # any process imports prometheus_client, so before granian forks the workers.
    os.environ.setdefault(MULTIPROC_ENV, tempfile.mkdtemp(prefix="tally-metrics-"))

    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    server = Server(
        WSGI_TARGET,
        address=options.host,
        port=options.port,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        websockets=False,
        workers=options.processes,
        blocking_threads=options.threads,
        # Requests beyond the threads wait in granian's loop, not in Python.
        backpressure=options.threads,
        http1_settings=HTTP1Settings(
            header_read_timeout=HEADER_READ_TIMEOUT_MS, max_buffer_size=MAX_HEAD_BYTES
        ),
        log_dictconfig=_logging_config(),
        log_access=options.access_log,
        log_access_format='%(addr)s "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).1fms',
        respawn_failed_workers=True,
        workers_kill_timeout=GRACEFUL_TIMEOUT_SECONDS,
    )
    server.serve()
