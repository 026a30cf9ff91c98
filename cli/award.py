"""`tally award FILE.csv`: upload contest awards of any size, watch them with one progress bar.

The file is read twice, streaming: once to count its rows and take its SHA-256,
then to send it in batches of at most --batch-size rows to the CSV import route.
Batch n's idempotency key is `<base>-<n>`, the base derived from the file's
content: running the same command again (after a crash, a kill, a network error)
sends the same batches with the same keys, and those already accepted are
answered as replays instead of being created again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from tally_client import BatchStatus, Client, TallyError, Unreachable

from cli import remote
from shared.bulk import CSV_COLUMNS, BatchInvalid, csv_records
from shared.config import load_settings

POLL_SECONDS = 0.2
# Seconds each try of a batch upload may take: the route validates and stores it whole.
UPLOAD_TIMEOUT = 300.0
CONTEXT_COLUMN = CSV_COLUMNS.index("context")
HEADER = ",".join(CSV_COLUMNS) + "\n"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Chunk:
    """One batch of the file: its rows as CSV text (with a header) and their row numbers."""

    text: str
    rows: list[int]


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) of every row that holds data, as the import route reads them."""
    with path.open(encoding="utf-8-sig", newline="") as stream:
        yield from csv_records(stream)


def _survey(path: Path) -> tuple[str, int]:
    """The file's SHA-256 and how many rows it holds."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest(), sum(1 for _ in _rows(path))


def chunks(path: Path, size: int, context: str | None) -> Iterator[Chunk]:
    """The file in batches of at most `size` rows; `context` fills rows that have none."""
    out, rows = io.StringIO(), []
    writer = csv.writer(out, lineterminator="\n")
    for number, cells in _rows(path):
        if context and len(cells) > CONTEXT_COLUMN and not cells[CONTEXT_COLUMN].strip():
            cells[CONTEXT_COLUMN] = context
        writer.writerow(cells)
        rows.append(number)
        if len(rows) == size:
            yield Chunk(HEADER + out.getvalue(), rows)
            out.seek(0)
            out.truncate()
            rows = []
    if rows:
        yield Chunk(HEADER + out.getvalue(), rows)


class Refused(Exception):
    """The server refused a batch (or could not be reached): nothing more is sent."""


class Unfollowed(Exception):
    """The batches sent could not be followed to the end (unreachable, or no progress)."""


def _submit(client: Client, chunk: Chunk, key: str, name: str) -> BatchStatus:
    """Send one batch; its accepted status. A refused batch names the file's rows at fault."""
    rows = f"rows {chunk.rows[0]}-{chunk.rows[-1]}"
    try:
        return client.import_csv(chunk.text, key=key, filename=name, timeout=UPLOAD_TIMEOUT)
    except Unreachable as error:
        raise Refused(f"could not send {rows}: {error}") from None
    except TallyError as error:
        lines = [f"refused ({error.status}) {rows}:"]
        for item in error.errors:
            # The server numbers the rows of the batch it got, its header being row 1.
            number = item.position
            row = chunk.rows[number - 2] if number is not None and number >= 2 else number
            lines.append(f"  row {row}: {item.field}: {item.message}")
        if not error.errors:
            lines.append(f"  {error.detail}")
        raise Refused("\n".join(lines)) from None


class Follower:
    """The statuses of the batches sent so far; the bar shows their final items."""

    def __init__(self, client: Client, bar: Any, patience: float) -> None:
        self.client = client
        self.bar = bar
        self.patience = patience
        self.statuses: dict[str, BatchStatus] = {}
        self.shown = 0
        self.progressed_at = time.monotonic()

    def add(self, status: BatchStatus) -> None:
        self.statuses[status.id] = status

    def poll(self) -> bool:
        """Refresh the unfinished batches; True once every batch is final."""
        try:
            for batch_id, status in self.statuses.items():
                if not status.final:
                    self.statuses[batch_id] = self.client.batch(batch_id)
        except TallyError as error:
            raise Unfollowed(f"could not read the batches' status: {error}") from None
        final = sum(status.done for status in self.statuses.values())
        now = time.monotonic()
        if final > self.shown:
            self.progressed_at = now
        elif now - self.progressed_at > self.patience:
            raise Unfollowed(f"no batch made progress for {self.patience:g} s")
        self.bar.update(final - self.shown)
        self.shown = final
        return all(status.final for status in self.statuses.values())


def _send_and_follow(
    client: Client, batches: Iterator[tuple[str, Chunk]], name: str, total: int, patience: float
) -> dict[str, BatchStatus]:
    """Send every batch, then follow them all until final, behind one progress bar."""
    with click.progressbar(length=total, label="applying", file=sys.stderr) as bar:
        follower = Follower(client, bar, patience)
        for key, chunk in batches:
            follower.add(_submit(client, chunk, key, name))
            follower.poll()
        while not follower.poll():
            time.sleep(POLL_SECONDS)
    return follower.statuses


def _rejected(client: Client, statuses: dict[str, BatchStatus]) -> list[dict[str, Any]]:
    """The status objects of every rejected row."""
    try:
        return [
            item.body
            for batch_id, status in statuses.items()
            if status.counts["rejected"]
            for item in client.batch_items(batch_id, status="rejected")
        ]
    except TallyError as error:
        raise Unfollowed(f"could not list the rejected rows: {error}") from None


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--context", help="reputation_context for rows that have none")
@click.option("--key", help="the batches' key prefix (default: derived from the file's content)")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="rows per batch (default: the import route's item limit, TALLY_BULK_MAX_ITEMS)",
)
@click.option(
    "--patience",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="seconds to follow the batches without any progress before giving up",
)
@remote.api_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def award(
    path: Path,
    context: str | None,
    url: str,
    token: str,
    key: str | None,
    batch_size: int | None,
    patience: float,
    retry_for: float,
    as_json: bool,
) -> None:
    """Award every row of a community CSV file, in batches; exit 1 if any row is rejected.

    Running the same command again resumes: batches already accepted are not
    created twice. Requests that get no answer (or a 429, 502, 503, 504) are
    retried for --retry-for seconds with the same keys. Exit 2 if the server
    refuses a batch (nothing of it is written; the rows at fault are listed),
    cannot be reached, or the batches make no progress for --patience seconds.
    """
    size = batch_size or load_settings().bulk_max_items
    try:
        digest, total = _survey(path)
    except BatchInvalid as bad:
        (error,) = bad.errors
        click.echo(f"row {error.position}: {error.message}; nothing was sent", err=True)
        sys.exit(2)
    base = key or f"award-{digest[:48]}"
    batches = ((f"{base}-{n}", chunk) for n, chunk in enumerate(chunks(path, size, context)))
    with remote.client(url, token, retry_for) as api:
        try:
            statuses = _send_and_follow(api, batches, path.name, total, patience)
            rejected = _rejected(api, statuses)
        except Refused as refused:
            click.echo(f"\n{refused}\nnothing of that batch was written; "
                       "run the same command again to resume", err=True)  # fmt: skip
            sys.exit(2)
        except Unfollowed as unfollowed:
            click.echo(f"\n{unfollowed}\nthe batches sent are accepted and will be "
                       "applied; run the same command again to follow them", err=True)  # fmt: skip
            sys.exit(2)
    counts = {
        name: sum(status.counts[name] for status in statuses.values())
        for name in ("completed", "rejected")
    }
    summary = {"batch_ids": list(statuses), "rows": total, "counts": counts,
               "rejected": rejected}  # fmt: skip
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{len(statuses)} batches, {total} rows: {counts['completed']} applied, "
                   f"{counts['rejected']} rejected")  # fmt: skip
        for item in rejected:
            click.echo(f"  rejected {item['idempotency_key']}: {item['error']['message']}")
    sys.exit(1 if rejected else 0)
