"""A worker serves its own /metrics: the samples its pool processes wrote (shared.platform.metrics).

The server is a thread of the worker's main process, started once the worker is
ready (connected to the broker, its pool started) and stopped when it shuts down.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from prometheus_client import start_http_server

from shared.platform.config import host_port
from shared.platform.metrics import group_registry

log = logging.getLogger(__name__)
_servers: list[Any] = []


@worker_ready.connect
def serve_metrics(sender: Any, **_: object) -> None:
    bind = sender.app.resources.settings.metrics_bind
    if not bind:
        return
    host, port = host_port(bind)
    try:
        server, _thread = start_http_server(port, host, registry=group_registry())
    except OSError as error:
        # The worker still works; only its metrics are missing, and the log says why.
        log.error("metrics not served on %s: %s", bind, error)
        return
    _servers.append(server)
    log.info("metrics served on http://%s/metrics", bind)


@worker_shutdown.connect
def stop_serving_metrics(**_: object) -> None:
    while _servers:
        _servers.pop().shutdown()
