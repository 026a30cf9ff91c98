"""GET /metrics, and the per-route request counter and latency histogram."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST

from api.resources import resources
from shared.flow.backlog import Outbox, outbox, queue_depths
from shared.platform.metrics import (
    API_SERIES,
    HTTP_LATENCY,
    HTTP_REQUESTS,
    BacklogCollector,
    render,
)

bp = Blueprint("metrics", __name__)

# Label values come from closed sets: a client choosing them could grow /metrics without end.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition format: the API's processes on this host, and the backlog."""
    res = resources()

    def backlog() -> Outbox:
        with res.sessions() as session:
            return outbox(session)

    collector = BacklogCollector(lambda: queue_depths(res.redis, res.settings.queue_name), backlog)
    # As is: `mimetype=` would add a second charset to it.
    return Response(
        render(API_SERIES, collector, res.replication), content_type=CONTENT_TYPE_LATEST
    )


def count_requests(app: Flask) -> None:
    """Count every answer by route, method and status, and time it by route and method.

    The route is the URL rule (`unmatched` for 404s and 405s), never the path; a method
    outside the standard ones is `other`.
    """

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        count_answer(route, request.method, response.status_code)
        if "started" in g:
            elapsed = time.perf_counter() - g.started
            HTTP_LATENCY.labels(route, _method(request.method)).observe(elapsed)
        return response


def count_answer(route: str, method: str, status: int) -> None:
    """Count one answer; `route` is a URL rule, `unmatched` or `front` (api.front's own)."""
    HTTP_REQUESTS.labels(route, _method(method), str(status)).inc()


def _method(method: str) -> str:
    return method if method in METHODS else "other"
