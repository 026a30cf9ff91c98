"""GET /metrics, and the per-request counter."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST

from api.resources import resources
from shared.backlog import outbox, queue_depths
from shared.metrics import HTTP_REQUESTS, BacklogCollector, render

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition format, aggregated over all processes of this host."""
    res = resources()

    def backlog():  # type: ignore[no-untyped-def]
        with res.sessions() as session:
            return outbox(session)

    collector = BacklogCollector(lambda: queue_depths(res.redis, res.settings.queue_name), backlog)
    return Response(render(collector), mimetype=CONTENT_TYPE_LATEST)


def count_requests(app: Flask) -> None:
    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        return response
