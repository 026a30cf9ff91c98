"""Operator commands: `tally reconcile` and `tally status`."""

from __future__ import annotations

import dataclasses
import sys

import click
import kombu.exceptions
import sqlalchemy.exc
from redis.exceptions import RedisError

from cli import connection
from cli.common import ServerUnreachable, emit, json_option, plural
from shared.flow.backlog import outbox, queue_depths
from shared.flow.dispatch import Lane, queue_of
from shared.ledger.reconcile import reconcile as check_ledger
from shared.platform.config import load_settings
from shared.platform.resources import Resources


@click.command()
@json_option
def reconcile(as_json: bool) -> None:
    """Check the ledger invariants everywhere; exit 1 on any violation.

    Exit 3 (not 1) when the database cannot be reached: nothing was checked.
    """
    settings = load_settings()
    resources = Resources(settings)
    try:
        with resources.sessions() as session:
            report = check_ledger(session, settings.idempotency_window_days)
    finally:
        resources.close()
    lines = [
        f"checked {plural(report.accounts, 'account')}, "
        f"{plural(report.entries, 'ledger entry', 'ledger entries')}, "
        f"{plural(report.requests, 'request')}: {plural(len(report.violations), 'violation')}",
        *(f"  invariant {v.invariant} ({v.check}): {v.subject}: {v.detail}"
          for v in report.violations),
    ]  # fmt: skip
    emit(as_json, dataclasses.asdict(report), "\n".join(lines))
    sys.exit(1 if report.violations else 0)


# Past this, the oldest pending request means the workers are stuck, gone or far behind
# (the relay hands a request to the workers again after TALLY_RELAY_DELAY, 30 s).
MAX_PENDING_AGE_SECONDS = 120.0
# How long the workers have to answer the broadcast.
WORKER_REPLY_SECONDS = 1.0
UNREACHABLE = (
    sqlalchemy.exc.OperationalError,
    RedisError,
    OSError,
    kombu.exceptions.OperationalError,
)


@click.command()
@click.option(
    "--max-pending-age",
    type=click.FloatRange(min=0),
    default=MAX_PENDING_AGE_SECONDS,
    show_default=True,
    help="Seconds the oldest pending request may wait before the status is unhealthy.",
)
@json_option
def status(max_pending_age: float, as_json: bool) -> None:
    """Queue depths, outbox backlog, oldest pending age and the workers of each lane.

    Exit 0 when healthy; 1 when the oldest pending request is older than
    --max-pending-age or a lane has no worker consuming its queue (each problem is
    listed); 3 when PostgreSQL or Redis cannot be reached. For cron and health checks.
    """
    from worker.app import make_celery

    settings = load_settings()
    celery = make_celery(settings)
    resources = celery.resources
    try:
        with resources.sessions() as session:
            backlog = outbox(session)
        depths = queue_depths(resources.redis, settings.queue_name)
        replies = celery.control.inspect(timeout=WORKER_REPLY_SECONDS).active_queues() or {}
    except UNREACHABLE as error:
        found = connection.unreachable(error) or f"could not reach the broker: {error}"
        raise ServerUnreachable(f"cannot check: {found}") from None
    finally:
        resources.close()
    lanes = {
        lane.value: sorted(
            worker
            for worker, queues in replies.items()
            if any(q["name"] == queue_of(settings.queue_name, lane) for q in queues)
        )
        for lane in Lane
    }
    problems = [f"no worker consumes the {lane} lane" for lane, names in lanes.items() if not names]
    if backlog.oldest_age_seconds > max_pending_age:
        problems.insert(
            0,
            f"the oldest pending request is {backlog.oldest_age_seconds:.0f} s old "
            f"(more than {max_pending_age:g} s)",
        )
    data = {
        "queue_depths": depths,
        "outbox_pending": backlog.pending,
        "oldest_pending_seconds": round(backlog.oldest_age_seconds, 3),
        "workers": sorted(replies),
        "lanes": lanes,
        "problems": problems,
    }
    rows = [
        *((f"queue {queue}", str(depth)) for queue, depth in depths.items()),
        ("outbox pending", str(backlog.pending)),
        ("oldest pending", f"{backlog.oldest_age_seconds:.1f} s"),
        *((f"{lane} workers", ", ".join(names) or "none") for lane, names in lanes.items()),
    ]
    width = max(len(name) for name, _ in rows)
    emit(as_json, data, "\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    if not as_json:
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
    sys.exit(1 if problems else 0)
