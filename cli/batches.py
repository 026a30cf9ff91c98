"""`tally batches show ID`: a bulk batch's status, followed to the end with a progress bar."""

from __future__ import annotations

import sys

import click
from tally_client import BatchStatus, Client, NotFound, WaitTimeout

from cli import remote
from cli.common import ExitCode, Failure, emit, json_option, plural


@click.group()
def batches() -> None:
    """Bulk batches: their status and rejected items."""


@batches.command("show")
@click.argument("batch_id")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="follow the batch until every item is final")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="seconds to follow it at most")  # fmt: skip
@remote.api_options
@json_option
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

    Exit 0 once every item is applied; 1 if any was rejected, the batch is not found
    or it is still going after --timeout; 3 if the API cannot be reached.
    """
    with remote.client(url, token, retry_for) as api:
        try:
            status = api.batch(batch_id)
            if follow and not status.final:
                status = _follow(api, status, timeout)
            rejected = (
                list(api.batch_items(batch_id, status="rejected"))
                if status.counts["rejected"]
                else []
            )
        except WaitTimeout as error:
            raise Failure(f"batch {batch_id}: {error}", "timeout") from None
        except NotFound:
            raise Failure(f"no batch {batch_id}", "not_found") from None

    def lines() -> str:
        counts = status.counts
        shown = [f"batch {status.id}: {status.status}, {plural(status.total, 'item')}: "
                 f"{counts['completed']} applied, {counts['rejected']} rejected, "
                 f"{counts['queued'] + counts['processing']} pending"]  # fmt: skip
        shown += [f"  rejected {item.body['idempotency_key']}: {item.error_message}"
                  for item in rejected]  # fmt: skip
        return "\n".join(shown)

    emit(as_json, {**status.body, "rejected": [item.body for item in rejected]}, lines)
    sys.exit(ExitCode.FOUND if rejected else ExitCode.OK)


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
