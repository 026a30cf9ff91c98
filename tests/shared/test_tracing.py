"""Tracing is off unless an OTLP endpoint is configured: the API's and a worker's start then
install no tracer provider and no instrumentation, nor even import them.

Each case runs in a fresh interpreter: what a process installs is global to it.
tests/processes/test_tracing.py shows what tracing does when it is on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Start a process the way granian (api.asgi, in each of its processes) or a Celery pool
# process (worker_process_init) does, make an engine, then say what tracing installed.
PROBE = """
import json, sys
if sys.argv[1] == "api":
    import api.asgi
    flask_app = api.asgi.app.flask
else:
    from celery.signals import worker_process_init
    import worker.celery_app
    worker_process_init.send(sender=None)
    flask_app = None
from shared.platform.db import make_engine
engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
# Before anything below imports them (redis imports opentelemetry.sdk.metrics itself).
tracing = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation")
imported = sorted(name for name in sys.modules if name.startswith(tracing))
import psycopg
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
print(json.dumps({
    "imported": imported,
    "provider": type(trace.get_tracer_provider()).__name__,
    "flask": getattr(flask_app, "_is_instrumented_by_opentelemetry", False),
    "celery": CeleryInstrumentor().is_instrumented_by_opentelemetry,
    "psycopg": hasattr(psycopg.connect, "__wrapped__"),
    "sqlalchemy": len(engine.dispatch.before_cursor_execute),
}))
"""


def _probe(role: str, **otel: str) -> dict[str, Any]:
    """What tracing installed in a fresh `role` process with these OTEL_* variables only."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, role],
        cwd=REPO,
        env=env | otel,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    probed: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return probed


@pytest.mark.parametrize("role", ["api", "worker"])
def test_without_an_otlp_endpoint_nothing_is_installed_or_imported(role: str) -> None:
    assert _probe(role) == {
        "imported": [],
        "provider": "ProxyTracerProvider",  # the API's no-op stand-in
        "flask": False,
        "celery": False,
        "psycopg": False,
        "sqlalchemy": 0,
    }


def test_otel_sdk_disabled_wins_over_an_endpoint() -> None:
    probed = _probe(
        "api", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_SDK_DISABLED="true"
    )
    assert (probed["imported"], probed["provider"]) == ([], "ProxyTracerProvider")


@pytest.mark.parametrize(
    ("role", "variable"),
    [("api", "OTEL_EXPORTER_OTLP_ENDPOINT"), ("worker", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")],
)
def test_with_an_otlp_endpoint_the_process_traces(role: str, variable: str) -> None:
    probed = _probe(role, **{variable: "http://127.0.0.1:9/v1/traces"})
    assert probed["provider"] == "TracerProvider"
    assert probed["flask"] is (role == "api")
    assert (probed["celery"], probed["psycopg"], probed["sqlalchemy"]) == (True, True, 1)
