"""The Flask application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify

from api import resources
from api.problems import register_error_handlers
from shared.config import Settings, load_settings
from worker.app import make_celery


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the API from `settings` (default: the environment) plus any overrides."""
    settings = (settings or load_settings()).with_overrides(overrides)
    app = Flask("tally")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    resources.init_app(app, make_celery(settings))
    register_error_handlers(app)

    from api import score, score_reads

    app.register_blueprint(score.bp)
    app.register_blueprint(score_reads.bp)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    return app
