"""Entry point for `celery -A worker.celery_app`: the app built from the environment."""

import logging

import click
from celery.signals import setup_logging, worker_process_init

from shared.platform.config import load_settings
from shared.platform.logs import configure_logging
from shared.platform.tracing import configure_tracing
from worker import metrics  # noqa: F401  (a worker serves its own /metrics)
from worker.app import make_celery
from worker.pump import EventPump

app = make_celery(load_settings())
# A worker that consumes the events lane numbers and hands on events (worker.pump).
app.steps["worker"].add(EventPump)


@setup_logging.connect
def _json_logs(loglevel: int | None = None, **_: object) -> None:
    # The celery program running (worker, beat) names the service of each line.
    program = click.get_current_context(silent=True)
    timers = [entry["task"] for entry in app.conf.beat_schedule.values()]
    configure_logging(
        program.info_name if program and program.info_name else "worker",
        level=loglevel or logging.INFO,
        timers=timers,
    )


@worker_process_init.connect
def _trace_tasks(**_: object) -> None:
    # In each pool process, after the fork (the span processor exports from a thread),
    # if an OTLP endpoint is configured: a task runs in the trace of whoever queued it.
    if configure_tracing("tally-worker"):
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]
