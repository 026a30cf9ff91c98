"""Serving the API with granian: requests are read on its event loop, not by a thread.

A gthread server hands a connection to a Python thread as soon as one byte arrives,
so a few hundred clients that trickle their headers take every thread (and one
huge request line takes CPU and memory). granian reads the request head in its Rust
I/O loop, with a deadline and a size cap; api.front reads the body on the event
loop, with a deadline and the route's limit; only a complete request reaches one of
the threads that run Flask. On SIGTERM granian stops accepting and lets requests in
flight finish.

Every connection is a file descriptor, so the process's descriptor limit is the
real cap on connections: `serve` raises the soft limit to the hard one and keeps
each process's connections (granian's backpressure: past it, new connections wait
in the kernel's accept queue) under what the limit leaves after the process's own
files, so an excess of clients waits instead of failing the ones being served.
"""

from __future__ import annotations

import resource
from typing import Any

from shared.platform.config import Settings, host_port
from shared.platform.logs import JSON_FORMAT, JSON_RENAMED

ASGI_TARGET = "api.asgi:app"
# A client has this long to send its request line and headers.
HEADER_READ_TIMEOUT_MS = 10_000
# granian's read buffer for the request line and headers; a head that does not fit is
# refused (431) before Python sees it. hyper grows its buffer in steps: a cap of 64 KiB
# let heads of 112 KiB through, 48 KiB holds at 48 KiB (measured; tests/processes/
# test_http_edges.py holds it).
MAX_HEAD_BYTES = 48 * 1024
# Connections one process holds open, reading or served, at most. granian's
# backpressure counts connections, not requests: slow clients use it up, so it is far
# above the threads (a connection waits for a thread cheaply, in the event loop).
MAX_CONNECTIONS = 4096
# Descriptors a process keeps for itself (database and Redis connections, the metrics
# files, logs, the libraries' own): this many, or half the limit if that is less.
RESERVED_DESCRIPTORS = 256
# A worker told to stop finishes its requests for up to this long, then is killed.
GRACEFUL_TIMEOUT_SECONDS = 30


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
        "filters": {"context": {"()": "shared.platform.logs.ContextFilter", "service": "api"}},
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": JSON_FORMAT,
                "rename_fields": JSON_RENAMED,
            }
        },
        "handlers": {"stdout": handler},
        "root": {"handlers": ["stdout"], "level": "INFO"},
        "loggers": {
            "_granian": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        },
    }


def connection_cap() -> int:
    """Connections per process: MAX_CONNECTIONS, or fewer if the descriptor limit is lower.

    Raises the soft descriptor limit to the hard one first (the processes granian forks
    inherit it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, MAX_CONNECTIONS * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return max(1, min(MAX_CONNECTIONS, soft - min(RESERVED_DESCRIPTORS, soft // 2)))


def serve(settings: Settings) -> None:
    """Run the API on `settings.bind` in the foreground until SIGINT or SIGTERM.

    The caller gives the API's processes their metrics folder (see shared.platform.metrics).
    """
    host, port = host_port(settings.bind)
    connections = connection_cap()
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server import Server

    server = Server(
        ASGI_TARGET,
        address=host,
        port=port,
        # No lifespan events: the app opens its connections on first use.
        interface=Interfaces.ASGINL,
        # The front's hand-overs (a body read, a thread's answer back) are event loop
        # work, done in C by uvloop: 7-9 % less API CPU per adjustment than asyncio's
        # loop on a busy machine, within the noise on a quiet one (PERFORMANCE.md,
        # "Where the API's core goes").
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        workers=settings.api_processes,
        backlog=MAX_CONNECTIONS,
        backpressure=connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=HEADER_READ_TIMEOUT_MS, max_buffer_size=MAX_HEAD_BYTES
        ),
        log_dictconfig=_logging_config(),
        log_access=settings.access_log,
        log_access_format='%(addr)s "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).1fms',
        respawn_failed_workers=True,
        workers_kill_timeout=GRACEFUL_TIMEOUT_SECONDS,
    )
    server.serve()
