"""`tally api|worker|beat`: tally's processes, each in the foreground (`tally run` starts all)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from shared.flow.dispatch import Lane, queue_of
from shared.platform.config import GROUP_ROOT_FILE, METRICS_FOLDER_ENV, load_settings


def _celery(command: str, *args: str) -> None:
    """Become `celery -A worker.celery_app <command>`."""
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", command,
            "--loglevel", "INFO", *args]  # fmt: skip
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@contextmanager
def _metrics_folder(group: str) -> Iterator[None]:
    """A folder of its own for this process group's metric files, while it runs.

    prometheus_client reads it when first imported, so this comes before any import of
    it; a folder inherited from a parent (`tally run`, a shell) is replaced, so that two
    groups never add up each other's samples (see shared.platform.metrics). The
    environment names the inherited one again afterwards, never a folder that is gone.
    """
    inherited = os.environ.get(METRICS_FOLDER_ENV)
    folder = tempfile.mkdtemp(prefix=f"tally-metrics-{group}-")
    Path(folder, GROUP_ROOT_FILE).write_text(str(os.getpid()))
    os.environ[METRICS_FOLDER_ENV] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if inherited is None:
            os.environ.pop(METRICS_FOLDER_ENV, None)
        else:
            os.environ[METRICS_FOLDER_ENV] = inherited


@click.command()
@click.option("--bind", help="HOST:PORT (default TALLY_BIND, 127.0.0.1:8000)")
@click.option("--processes", type=int, help="processes (default TALLY_API_PROCESSES, 2)")
@click.option("--threads", type=int, help="threads per process (default TALLY_API_THREADS, 16)")
def api(bind: str | None, processes: int | None, threads: int | None) -> None:
    """Serve the HTTP API (granian, ASGI) in the foreground; its /metrics too."""
    given = {"bind": bind, "api_processes": processes, "api_threads": threads}
    with _metrics_folder("api"):
        from api.server import serve

        serve(load_settings().with_overrides({k: v for k, v in given.items() if v}))


LANE_NAMES = [lane.value for lane in Lane]


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--lanes",
    default=",".join(LANE_NAMES),
    show_default=True,
    help="Comma-separated lanes whose queues this worker consumes: interactive (single "
    "adjustments), bulk (batch items), relay (the outbox relay), events (the event "
    "log's jobs; such a worker also runs the event pump), webhooks (deliveries).",
)
@click.option(
    "--metrics-bind",
    help="HOST:PORT where this worker serves its /metrics, or '' for none "
    "(default TALLY_METRICS_BIND, 127.0.0.1:9808).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(lanes: str, metrics_bind: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`).

    Run one worker for interactive,relay, one for bulk and one for events,webhooks,
    so that single adjustments never wait behind a batch or a slow receiver; each is named
    after its lanes (`bulk@host`).
    """
    chosen = [name.strip() for name in lanes.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(LANE_NAMES))
    if unknown or not chosen:
        raise click.BadParameter(f"choose from {', '.join(LANE_NAMES)}", param_hint="--lanes")
    if metrics_bind is not None:
        os.environ["TALLY_METRICS_BIND"] = metrics_bind
    base = load_settings().queue_name
    queues = ",".join(queue_of(base, Lane(name)) for name in chosen)
    argv = ["worker", "--loglevel", "INFO", "--queues", queues,
            "--hostname", f"{'+'.join(chosen)}@%h", *celery_args]  # fmt: skip
    # In this process (not exec'd), so that the metrics folder goes when the worker does.
    with _metrics_folder("worker"):
        from worker.celery_app import app

        code = app.start(argv)
    sys.exit(code or 0)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run Celery beat: the outbox relay, lot expiries and hold timeouts."""
    _celery("beat", *celery_args)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Run Flower, the Celery monitor, its lines in tally's JSON (arguments go to Flower)."""
    # Flower serves its own /metrics from its own registry, never a group's folder.
    os.environ.pop(METRICS_FOLDER_ENV, None)
    from shared.platform.logs import configure_logging
    from worker.celery_app import app

    configure_logging("flower")
    # Tornado then adds no handler of its own: its and Flower's lines reach the JSON one.
    sys.exit(app.start(["flower", "--logging=none", *flower_args]) or 0)
