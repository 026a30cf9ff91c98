"""Tracing with OpenTelemetry: spans exported over OTLP/HTTP, off unless an endpoint is set.

The standard variables configure it, not tally's: OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) turns it on, OTEL_SDK_DISABLED=true off again, and
the SDK reads the rest itself (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS, ...). Without an endpoint
`configure_tracing` imports and installs nothing, so an untraced process pays nothing.

Each process calls it once, after any fork: the span processor exports from a thread
of its own. The SQL is traced here (psycopg's connections, and SQLAlchemy's engines
as shared.platform.db makes them); the API adds its Flask requests and the workers
their Celery tasks (api.asgi, worker.celery_app), whose W3C trace context travels in
the task message's headers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata

from sqlalchemy import Engine

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment names an OTLP endpoint and does not disable the SDK."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def configure_tracing(service_name: str) -> bool:
    """Export this process's spans to the configured OTLP endpoint and trace its SQL.

    `service_name` ("tally-api", "tally-worker") is the resource's service.name unless
    OTEL_SERVICE_NAME gives one. Returns whether tracing is on; without an endpoint
    this does nothing at all.
    """
    if not tracing_wanted():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {SERVICE_VERSION: metadata.version("tally")}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = service_name
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # Each statement again as psycopg runs it (beside SQLAlchemy's span, see trace_engine),
    # and the queries with which SQLAlchemy sets up a new connection.
    PsycopgInstrumentor().instrument()
    return True


def trace_engine(engine: Engine) -> None:
    """Give `engine`'s statements spans (SQLAlchemy's instrumentation) if tracing is wanted.

    shared.platform.db.make_engine calls it for every engine, so that one made before
    `configure_tracing` (a worker's, before the fork) is traced too: its spans go to
    whichever tracer provider the process installs.
    """
    if not tracing_wanted():
        return
    from opentelemetry import metrics, trace
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from opentelemetry.semconv.metrics import MetricInstruments

    # What SQLAlchemyInstrumentor().instrument(engine=engine) builds, without the rest of
    # it: it also wraps create_async_engine, whose import needs greenlet (an extra of
    # sqlalchemy 2.1 that tally does without). The instrumentation declares sqlalchemy
    # < 2.1; the engine events it listens to are the same in 2.1 (tests/processes/
    # test_tracing.py holds it to that).
    scope = "opentelemetry.instrumentation.sqlalchemy"
    connections = metrics.get_meter(scope, __version__).create_up_down_counter(
        MetricInstruments.DB_CLIENT_CONNECTIONS_USAGE, unit="connections"
    )
    EngineTracer(trace.get_tracer(scope, __version__), engine, connections)  # type: ignore[no-untyped-call]


@contextmanager
def new_trace() -> Iterator[None]:
    """Within the block no trace is current: a task queued in it starts a trace of its own.
    Without tracing there is no trace to leave (and nothing is imported)."""
    if not tracing_wanted():
        yield
        return
    from opentelemetry import context

    token = context.attach(context.Context())
    try:
        yield
    finally:
        context.detach(token)
