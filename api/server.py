"""Serving the API with granian: request heads are read in its Rust I/O loop, not by a thread.

A gthread server hands a connection to a Python thread as soon as one byte arrives,
so a few hundred clients that trickle their headers take every thread (and one
huge request line takes CPU and memory). granian reads the request head on its own
event loop, with a deadline and a size cap, and only a complete request reaches one
of the WSGI threads; on SIGTERM it stops accepting and lets requests in flight finish.
"""

from __future__ import annotations

from typing import Any

from shared.config import Settings, host_port
from shared.logs import JSON_FORMAT, JSON_RENAMED

WSGI_TARGET = "api.wsgi:app"
# A client has this long to send its request line and headers.
HEADER_READ_TIMEOUT_MS = 10_000
# The request line and headers together; a longer head is refused before Python sees it.
MAX_HEAD_BYTES = 64 * 1024
# Connections one process holds open, reading or served. granian's backpressure counts
# connections, not requests: slow clients use it up, so it is far above the threads
# (a connection waits for a thread cheaply, in the event loop).
MAX_CONNECTIONS = 4096
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
        "filters": {"context": {"()": "shared.logs.ContextFilter", "service": "api"}},
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


def serve(settings: Settings) -> None:
    """Run the API on `settings.bind` in the foreground until SIGINT or SIGTERM.

    The caller gives the API's processes their metrics folder (see shared.metrics).
    """
    host, port = host_port(settings.bind)
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    server = Server(
        WSGI_TARGET,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        websockets=False,
        workers=settings.api_processes,
        blocking_threads=settings.api_threads,
        backlog=MAX_CONNECTIONS,
        backpressure=MAX_CONNECTIONS,
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
