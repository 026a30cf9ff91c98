"""ASGI entry point for granian: `api.asgi:app` (the front, then Flask; see api.front).

granian imports it in each of its processes, after the fork: so each process sets up
its own tracing here, if an OTLP endpoint is configured (shared.platform.tracing).
"""

import os

from flask import Flask

from api.app import create_app
from api.front import Front
from shared.platform.tracing import configure_tracing

# Probes and scrapes, every few seconds, are left out of the traces (the standard
# OTEL_PYTHON_FLASK_EXCLUDED_URLS replaces this list).
UNTRACED_URLS = "/healthz,/readyz,/metrics"


def traced(flask: Flask) -> Flask:
    """`flask`, its requests traced and the tasks it queues carrying their trace context."""
    if configure_tracing("tally-api"):
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        excluded = os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS", UNTRACED_URLS)
        FlaskInstrumentor.instrument_app(flask, excluded_urls=excluded)  # type: ignore[no-untyped-call]
        # The hook that opens the request's span (instrument_app added it last) runs
        # first, so that the span covers the rate limits' token lookup and a 429 of theirs.
        hooks = flask.before_request_funcs[None]
        hooks.insert(0, hooks.pop())
        # On Celery's before_task_publish: the request's context into the drain task's headers.
        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]
    return flask


app = Front(traced(create_app()))
