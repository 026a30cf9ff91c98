"""Operator commands: `tally reconcile` and `tally status`."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from shared.backlog import outbox, queue_depths
from shared.config import load_settings
from shared.reconcile import reconcile as check_ledger
from shared.resources import Resources


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reconcile(as_json: bool) -> None:
    """Check ledger invariants 1, 2 and 5 for every account; exit 1 on any violation."""
    resources = Resources(load_settings())
    try:
        with resources.sessions() as session:
            report = check_ledger(session)
    finally:
        resources.close()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report)))
    else:
        click.echo(
            f"checked {report.accounts} accounts, {report.entries} ledger entries, "
            f"{report.requests} requests: {len(report.violations)} violations"
        )
        for violation in report.violations:
            click.echo(
                f"  invariant {violation.invariant}: {violation.subject}: {violation.detail}"
            )
    sys.exit(1 if report.violations else 0)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Queue depths, outbox backlog, oldest pending age and the workers that answer."""
    from worker.app import make_celery

    settings = load_settings()
    celery = make_celery(settings)
    resources = celery.resources
    try:
        with resources.sessions() as session:
            backlog = outbox(session)
        depths = queue_depths(resources.redis, settings.queue_name)
        replies = celery.control.ping(timeout=1.0) or []
    finally:
        resources.close()
    workers = sorted(name for reply in replies for name in reply)
    data = {
        "queue_depths": depths,
        "outbox_pending": backlog.pending,
        "oldest_pending_seconds": round(backlog.oldest_age_seconds, 3),
        "workers": workers,
    }
    if as_json:
        click.echo(json.dumps(data))
        return
    rows = [
        *((f"queue {queue}", str(depth)) for queue, depth in depths.items()),
        ("outbox pending", str(backlog.pending)),
        ("oldest pending", f"{backlog.oldest_age_seconds:.1f} s"),
        ("workers", ", ".join(workers) or "none answered"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
