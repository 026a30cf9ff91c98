"""GET /metrics, and the per-route request counter and latency histogram."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST

from api.resources import resources
from shared.backlog import Outbox, outbox, queue_depths
from shared.metrics import HTTP_LATENCY, HTTP_REQUESTS, BacklogCollector, render

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
    return Response(render(collector), mimetype=CONTENT_TYPE_LATEST)


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
        method = request.method if request.method in METHODS else "other"
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        if "started" in g:
            HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - g.started)
        return response
