"""`tally batches show ID`: a bulk batch's status, followed to the end with a progress bar."""

from __future__ import annotations

import json
import sys

import click
from tally_client import BatchStatus, Client, TallyError, WaitTimeout

from cli import remote


@click.group()
def batches() -> None:
    """Bulk batches, through the API."""


@batches.command("show")
@click.argument("batch_id")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="follow the batch until every item is final")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="seconds to follow it at most")  # fmt: skip
@remote.api_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(
    batch_id: str,
    follow: bool,
    timeout: float,
    url: str,
    token: str,
    retry_for: float,
    as_json: bool,
) -> None:
    """Show a batch (its counts, status and rejected items), following it to the end.

    Exit 0 once every item is applied, 1 if any was rejected, 2 if the batch is not
    found, the API cannot be reached or the batch is still going after --timeout.
    """
    with remote.client(url, token, retry_for) as api:
        try:
            status = api.batch(batch_id)
            if follow and not status.final:
                status = _follow(api, status, timeout)
            rejected = (
                api.batch_items(batch_id, status="rejected") if status.counts["rejected"] else []
            )
        except WaitTimeout as error:
            click.echo(f"\n{error}", err=True)
            sys.exit(2)
        except TallyError as error:
            click.echo(f"batch {batch_id}: {error}", err=True)
            sys.exit(2)
    if as_json:
        click.echo(json.dumps({**status.body, "rejected": [item.body for item in rejected]}))
    else:
        counts = status.counts
        click.echo(f"batch {status.id}: {status.status}, {status.total} items: "
                   f"{counts['completed']} applied, {counts['rejected']} rejected, "
                   f"{counts['queued'] + counts['processing']} pending")  # fmt: skip
        for item in rejected:
            click.echo(f"  rejected {item.body['idempotency_key']}: {item.error_message}")
    sys.exit(1 if rejected else 0)


def _follow(api: Client, status: BatchStatus, timeout: float) -> BatchStatus:
    """Follow the batch behind a progress bar of its final items."""
    with click.progressbar(length=status.total, label=f"batch {status.id}", file=sys.stderr) as bar:
        bar.update(status.done)
        shown = status.done

        def progress(current: BatchStatus) -> None:
            nonlocal shown
            bar.update(current.done - shown)
            shown = current.done

        return api.follow_batch(status.id, timeout=timeout, on_progress=progress)
