"""The Flask application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, g, request

from api import resources
from api.body import refuse_unread_bodies
from api.limits import init_limits
from api.problems import register_error_handlers
from shared.platform import logs
from shared.platform.config import Settings, load_settings
from worker.app import make_celery


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the API from `settings` (default: the environment) plus any overrides."""
    settings = (settings or load_settings()).with_overrides(overrides)
    app = Flask("tally", static_folder=None)
    # Bodies are read by api.body.read_body, which enforces each route's limit however the
    # body is framed; werkzeug's own limit would cut a chunked body short without a word.
    app.config["MAX_CONTENT_LENGTH"] = None
    app.json.sort_keys = False  # type: ignore[attr-defined]
    celery = make_celery(settings)
    resources.init_app(app, celery)

    from api import (
        bulk,
        events,
        health,
        history,
        holds,
        metrics,
        openapi,
        points,
        score,
        score_reads,
        users,
        webhooks,
    )

    # Seed 002's routes answer in their envelope, a URL under them that matches no route too.
    register_error_handlers(app, {f"{points.bp.url_prefix}/": points.as_envelope})

    # First, so that every answer is counted, timed and carries its X-Request-ID, a rate
    # limit's 429 too.
    metrics.count_requests(app)
    track_request_ids(app)
    # Before the limits: a body the front could not read costs no token lookup.
    refuse_unread_bodies(app, settings)
    # Before the limits, whose token lookup may write.
    health.refuse_unreplicated_writes(app, settings)
    init_limits(app, settings, lambda: celery.resources.keys.limits)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(score.bp)
    app.register_blueprint(score_reads.bp)
    app.register_blueprint(points.bp)
    app.register_blueprint(holds.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(bulk.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(history.bp)
    app.register_blueprint(webhooks.bp)
    return app


def track_request_ids(app: Flask) -> None:
    """Give each request an id (the client's X-Request-ID, or a new one) for the logs."""

    @app.before_request
    def _start() -> None:
        g.request_id = logs.request_id_of(request.headers.get("X-Request-ID", ""))
        g.request_id_token = logs.request_id.set(g.request_id)

    @app.after_request
    def _echo(response: Response) -> Response:
        if "request_id" in g:
            response.headers["X-Request-ID"] = g.request_id
        return response

    @app.teardown_request
    def _end(_: BaseException | None) -> None:
        if "request_id_token" in g:
            logs.request_id.reset(g.request_id_token)
