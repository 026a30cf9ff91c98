"""A worker serves its own /metrics (the samples its pool processes wrote, see
shared.platform.metrics) and /healthz (can it take tasks: is it connected to the broker).

The server is a thread of the worker's main process, started once the worker is
ready (connected to the broker, its pool started) and stopped when it shuts down.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import bootsteps
from celery.signals import worker_ready, worker_shutdown
from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from shared.platform.config import host_port
from shared.platform.metrics import WORKER_SERIES, group_registry

log = logging.getLogger(__name__)
_servers: list[WSGIServer] = []
# Seconds the broker has to answer a health check's new connection.
BROKER_TIMEOUT = 2.0


def broker_problem(consumer: Any) -> str | None:
    """Why this worker cannot take tasks now, or None: its consumer must be running on a
    connection, and the broker must answer a new one now (a consumer notices a dead
    broker only when it next reads)."""
    if consumer.connection is None or consumer.blueprint.state != bootsteps.RUN:
        return "not connected to the broker (reconnecting)"
    try:
        with consumer.app.connection_for_read(connect_timeout=BROKER_TIMEOUT) as connection:
            connection.ensure_connection(max_retries=0)
    except Exception as error:  # whatever the transport raises, the broker did not answer
        return f"the broker did not answer: {type(error).__name__}: {error}"
    return None


def health_app(consumer: Any, metrics: Callable[..., Iterable[bytes]]) -> Callable[..., Any]:
    """/healthz: 200 "ok", or 503 and why; anything else: the metrics."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)
        problem = broker_problem(consumer)
        status = "503 Service Unavailable" if problem else "200 OK"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [(problem or "ok").encode() + b"\n"]

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # every scrape is not news
        pass


@worker_ready.connect
def serve_metrics(sender: Any, **_: object) -> None:
    """`sender` is the worker's consumer."""
    bind = sender.app.resources.settings.metrics_bind
    if not bind:
        return
    host, port = host_port(bind)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    app = health_app(sender, make_wsgi_app(group_registry(WORKER_SERIES)))
    try:
        server = make_server(host, port, app, Server, handler_class=_Quiet)
    except OSError as error:
        # The worker still works; only its metrics are missing, and the log says why.
        log.error("metrics not served on %s: %s", bind, error)
        return
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    _servers.append(server)
    log.info("metrics served on http://%s/metrics, health on /healthz", bind)


@worker_shutdown.connect
def stop_serving_metrics(**_: object) -> None:
    while _servers:
        _servers.pop().shutdown()
