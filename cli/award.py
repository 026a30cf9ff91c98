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
import requests

from shared.bulk import CSV_COLUMNS, BatchInvalid, csv_records
from shared.config import load_settings

POLL_SECONDS = 0.2
FINAL = ("completed", "completed_with_rejections")
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


def _submit(http: requests.Session, url: str, chunk: Chunk, key: str, name: str) -> str:
    """Send one batch; its status URL. A refused batch names the file's rows at fault."""
    try:
        response = http.post(
            f"{url}/api/v2/score/import/",
            files={"csv_file": (name, chunk.text.encode(), "text/csv")},
            data={"dry_run": "false"},
            headers={"Idempotency-Key": key},
            timeout=300,
        )
    except requests.RequestException as error:
        raise Refused(f"could not send rows {chunk.rows[0]}-{chunk.rows[-1]}: {error}") from None
    if response.status_code == 202:
        return str(response.headers["Location"])
    lines = [f"refused ({response.status_code}) rows {chunk.rows[0]}-{chunk.rows[-1]}:"]
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text[:200]}
    for item in problem.get("errors", []):
        # The server numbers the rows of the batch it got, its header being row 1.
        number = item.get("row_number")
        row = chunk.rows[number - 2] if isinstance(number, int) and number >= 2 else number
        lines.append(f"  row {row}: {item.get('field')}: {item.get('message')}")
    if not problem.get("errors"):
        lines.append(f"  {problem.get('detail') or problem.get('title')}")
    raise Refused("\n".join(lines))


def _status(http: requests.Session, status_url: str) -> dict[str, Any]:
    response = http.get(status_url, timeout=30)
    if response.status_code != 200:
        raise Refused(f"batch status {status_url}: {response.status_code}")
    status: dict[str, Any] = response.json()
    return status


def _rejected(http: requests.Session, status_url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    url: str | None = f"{status_url}/items?status=rejected&limit=1000"
    while url:
        page = http.get(url, timeout=30).json()
        items += page["results"]
        url = page["next"]
    return items


class Follower:
    """The statuses of the batches sent so far; the bar shows their final items."""

    def __init__(self, http: requests.Session, bar: Any) -> None:
        self.http = http
        self.bar = bar
        self.statuses: dict[str, dict[str, Any]] = {}
        self.shown = 0

    def add(self, status_url: str) -> None:
        self.statuses[status_url] = {}

    def poll(self) -> bool:
        """Refresh the unfinished batches; True once every batch is final."""
        for url, status in self.statuses.items():
            if status.get("status") not in FINAL:
                self.statuses[url] = _status(self.http, url)
        final = sum(
            status["counts"]["completed"] + status["counts"]["rejected"]
            for status in self.statuses.values()
        )
        self.bar.update(final - self.shown)
        self.shown = final
        return all(s["status"] in FINAL for s in self.statuses.values())


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--context", help="reputation_context for rows that have none")
@click.option("--url", envvar="TALLY_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="TALLY_TOKEN", required=True, help="or TALLY_TOKEN")
@click.option("--key", help="the batches' key prefix (default: derived from the file's content)")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="rows per batch (default: the import route's item limit, TALLY_BULK_MAX_ITEMS)",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def award(
    path: Path,
    context: str | None,
    url: str,
    token: str,
    key: str | None,
    batch_size: int | None,
    as_json: bool,
) -> None:
    """Award every row of a community CSV file, in batches; exit 1 if any row is rejected.

    Running the same command again resumes: batches already accepted are not
    created twice. Exit 2 if the server refuses a batch (nothing of it is written;
    the rows at fault are listed) or cannot be reached.
    """
    size = batch_size or load_settings().bulk_max_items
    try:
        digest, total = _survey(path)
    except BatchInvalid as bad:
        (error,) = bad.errors
        click.echo(f"row {error.position}: {error.message}; nothing was sent", err=True)
        sys.exit(2)
    base = key or f"award-{digest[:48]}"
    base_url = url.rstrip("/")
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        with click.progressbar(length=total, label="applying", file=sys.stderr) as bar:
            follower = Follower(http, bar)
            try:
                for n, chunk in enumerate(chunks(path, size, context)):
                    follower.add(_submit(http, base_url, chunk, f"{base}-{n}", path.name))
                    follower.poll()
                while not follower.poll():
                    time.sleep(POLL_SECONDS)
            except Refused as refused:
                click.echo(f"\n{refused}\nnothing of that batch was written; "
                           "run the same command again to resume", err=True)  # fmt: skip
                sys.exit(2)
        statuses = follower.statuses
        rejected = [
            item
            for url, status in statuses.items()
            if status["counts"]["rejected"]
            for item in _rejected(http, url)
        ]
    counts = {
        name: sum(status["counts"][name] for status in statuses.values())
        for name in ("completed", "rejected")
    }
    summary = {"batch_ids": [s["id"] for s in statuses.values()], "rows": total,
               "counts": counts, "rejected": rejected}  # fmt: skip
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{len(statuses)} batches, {total} rows: {counts['completed']} applied, "
                   f"{counts['rejected']} rejected")  # fmt: skip
        for item in rejected:
            click.echo(f"  rejected {item['idempotency_key']}: {item['error']['message']}")
    sys.exit(1 if rejected else 0)
