"""`tally award FILE.csv --key NAME`: upload contest awards of any size, watch them with one
progress bar, and resume safely after a crash, a refusal or an edit of the file.

Each row is sent as an item of the bulk route with a key of its own, `NAME:row-N` (N its
row number in the file), in batches of at most --batch-size rows. Running the command
again sends the same rows with the same keys: those accepted before are replayed, not
applied again, even after another row was edited (a refused row fixed, say), and a row
whose content changed after it was accepted is refused, never applied twice. Each
batch's own key derives from its items, so a batch sent before is replayed whole.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from tally_client import BatchStatus, Client, TallyError, Unreachable

from cli import csv_files, remote
from cli.common import ExitCode, Failure, ServerUnreachable, emit, json_option, plural
from shared.intake.bulk_bodies import CSV_COLUMNS
from shared.platform.config import load_settings

POLL_SECONDS = 0.2
# Seconds each try of a batch upload may take: the route validates and stores it whole.
UPLOAD_TIMEOUT = 300.0
ITEM_FIELDS = {"username": "username", "user_id": "user_id", "variation_points": "score",
               "context": "reputation_context", "comment": "comment"}  # fmt: skip


@dataclass(frozen=True)
class Row:
    number: int
    username: str
    item: dict[str, Any]


@dataclass(frozen=True)
class Chunk:
    """One batch of the file: its rows, and the batch's key (derived from its items)."""

    key: str
    rows: list[Row]

    @property
    def span(self) -> str:
        return f"rows {self.rows[0].number}-{self.rows[-1].number}"

    def name_of(self, index: int | None) -> str:
        """`row N (username)` of the batch's item at `index`."""
        if index is None or not 0 <= index < len(self.rows):
            return "a row"
        row = self.rows[index]
        return f"row {row.number}" + (f" ({row.username})" if row.username else "")


def _rows(path: Path, name: str, context: str | None) -> Iterator[Row]:
    """Every row that holds data, as a bulk item with its own key (UnreadableFile if the
    file is not CSV of the import's five columns)."""
    for number, values in csv_files.rows(path, CSV_COLUMNS, "username", header=False):
        if context and not values["context"]:
            values["context"] = context
        item = {ITEM_FIELDS[column]: value for column, value in values.items() if value}
        item["idempotency_key"] = f"{name}:row-{number}"
        yield Row(number, values["username"], item)


def chunks(path: Path, size: int, name: str, context: str | None) -> Iterator[Chunk]:
    """The file in batches of at most `size` rows."""
    rows: list[Row] = []
    for row in _rows(path, name, context):
        rows.append(row)
        if len(rows) == size:
            yield _chunk(name, rows)
            rows = []
    if rows:
        yield _chunk(name, rows)


def _chunk(name: str, rows: list[Row]) -> Chunk:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row.item, sort_keys=True).encode() + b"\n")
    return Chunk(f"{name}:batch-{digest.hexdigest()[:32]}", rows)


class Refused(Exception):
    """The server refused a batch (or could not be reached): nothing more is sent."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Unfollowed(Exception):
    """The batches sent could not be followed to the end (unreachable, or no progress)."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def _refused(chunk: Chunk, error: TallyError) -> Refused:
    lines = [f"refused ({error.status}) {chunk.span}:"]
    for item in error.errors:
        lines.append(f"  {chunk.name_of(item.position)}: {item.field}: {item.message}")
    if not error.errors:
        lines.append(f"  {error.detail}")
    return Refused("\n".join(lines))


def _submit(client: Client, chunk: Chunk) -> BatchStatus:
    """Send one batch; its accepted status. A refused batch names the file's rows at fault."""
    try:
        return client.bulk([row.item for row in chunk.rows], key=chunk.key,
                           timeout=UPLOAD_TIMEOUT)  # fmt: skip
    except Unreachable as error:
        raise Refused(f"could not send {chunk.span}: {error}", unreachable=True) from None
    except TallyError as error:
        raise _refused(chunk, error) from None


@dataclass
class Tally:
    """What the run did: items new and replayed, and each new batch's latest status."""

    rows: int = 0
    new: int = 0
    replayed: int = 0
    statuses: dict[str, BatchStatus] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # item key -> "row N (username)"


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
            raise Unfollowed(f"could not read the batches' status: {error}",
                             isinstance(error, Unreachable)) from None  # fmt: skip
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
    client: Client, batches: Iterator[Chunk], total: int, patience: float, tally: Tally
) -> None:
    """Send every batch, then follow the new ones until final, behind one progress bar."""
    with click.progressbar(length=total, label="applying", file=sys.stderr) as bar:
        follower = Follower(client, bar, patience)
        for chunk in batches:
            status = _submit(client, chunk)
            tally.names |= {row.item["idempotency_key"]: chunk.name_of(i)
                            for i, row in enumerate(chunk.rows)}  # fmt: skip
            if status.replayed:  # sent whole before: followed then
                tally.replayed += len(chunk.rows)
                bar.update(len(chunk.rows))
                continue
            tally.new += status.total
            tally.replayed += status.replayed_items
            bar.update(status.replayed_items)
            follower.add(status)
            follower.poll()
        while not follower.poll():
            time.sleep(POLL_SECONDS)
    tally.statuses = follower.statuses


def _plan(client: Client, batches: Iterator[Chunk], tally: Tally) -> None:
    """--dry-run: what each batch would do; nothing is written."""
    for chunk in batches:
        try:
            plan = client.plan_bulk([row.item for row in chunk.rows], key=chunk.key,
                                    timeout=UPLOAD_TIMEOUT)  # fmt: skip
        except Unreachable as error:
            raise Refused(f"could not send {chunk.span}: {error}", unreachable=True) from None
        except TallyError as error:
            raise _refused(chunk, error) from None
        tally.new += plan.new
        tally.replayed += plan.replayed


def _rejected(client: Client, tally: Tally) -> list[dict[str, Any]]:
    """The status objects of every rejected row, each with its row's name."""
    try:
        return [
            item.body | {"row": tally.names.get(item.idempotency_key or "", "a row")}
            for batch_id, status in tally.statuses.items()
            if status.counts["rejected"]
            for item in client.batch_items(batch_id, status="rejected")
        ]
    except TallyError as error:
        raise Unfollowed(
            f"could not list the rejected rows: {error}", isinstance(error, Unreachable)
        ) from None


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    required=True,
    help="the award's name, unique to it (say spring-contest-2026): row N's key is NAME:row-N",
)
@click.option("--context", help="reputation_context for rows that have none")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="rows per batch (default: the bulk route's item limit, TALLY_BULK_MAX_ITEMS)",
)
@click.option(
    "--patience",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="seconds to follow the batches without any progress before giving up",
)
@click.option("--dry-run", is_flag=True, help="say what would be applied; write nothing")
@remote.api_options
@json_option
def award(
    path: Path,
    key: str,
    context: str | None,
    batch_size: int | None,
    patience: float,
    dry_run: bool,
    url: str,
    token: str,
    retry_for: float,
    as_json: bool,
) -> None:
    """Award every row of a community CSV file, in batches; exit 1 if any row is rejected.

    Running the same command again resumes, and so does running it again after fixing
    a refused row: rows accepted before are replayed (counted, not applied again). A
    row changed after it was accepted is refused: give a new award a new --key.
    Requests that get no answer (or a 429, 502, 503, 504) are retried for --retry-for
    seconds with the same keys. Exit 1 also if the file is not CSV of the five columns,
    the server refuses a batch (nothing of it is written; the rows at fault are listed
    by row number and username) or the batches make no progress for --patience
    seconds; 3 if the API cannot be reached.
    """
    size = batch_size or load_settings().bulk_max_items
    tally = Tally()
    try:
        tally.rows = sum(1 for _ in _rows(path, key, context))
    except csv_files.UnreadableFile as bad:
        raise Failure(f"{bad}; nothing was sent", "unreadable") from None
    batches = chunks(path, size, key, context)
    rejected: list[dict[str, Any]] = []
    with remote.client(url, token, retry_for) as api:
        try:
            if dry_run:
                _plan(api, batches, tally)
            else:
                _send_and_follow(api, batches, tally.rows, patience, tally)
                rejected = _rejected(api, tally)
        except Refused as refused:
            text = (f"\n{refused}\nnothing of that batch was written; fix it and run the same"
                    " command again: rows accepted before are not applied again")  # fmt: skip
            raise (ServerUnreachable(text) if refused.unreachable else Failure(text)) from None
        except Unfollowed as unfollowed:
            text = (f"\n{unfollowed}\nthe batches sent are accepted and will be applied; run"
                    " the same command again to follow them")  # fmt: skip
            if unfollowed.unreachable:
                raise ServerUnreachable(text) from None
            raise Failure(text, "unfollowed") from None
    _report(tally, rejected, dry_run, as_json)
    sys.exit(ExitCode.FOUND if rejected else ExitCode.OK)


def _report(tally: Tally, rejected: list[dict[str, Any]], dry_run: bool, as_json: bool) -> None:
    counts = {
        name: sum(status.counts[name] for status in tally.statuses.values())
        for name in ("completed", "rejected")
    }
    summary = {"rows": tally.rows, "new": tally.new, "replayed": tally.replayed,
               "dry_run": dry_run, "batch_ids": list(tally.statuses), "counts": counts,
               "rejected": rejected}  # fmt: skip

    def text() -> str:
        rows = plural(tally.rows, "row")
        if dry_run:
            return (f"dry run, {rows}: {tally.new} would be applied, {tally.replayed}"
                    " were sent before; nothing was written")  # fmt: skip
        lines = [f"{rows}: {tally.new} new, {tally.replayed} sent before (not applied again);"
                 f" {counts['completed']} applied, {counts['rejected']} rejected"]  # fmt: skip
        lines += [f"  rejected {item['row']}: {item['error']['message']}" for item in rejected]
        return "\n".join(lines)

    emit(as_json, summary, text)
