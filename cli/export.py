"""`tally export`: a tenant's ledger entries (or requests) to stdout, through the API."""

from __future__ import annotations

import sys
import time
from datetime import datetime

import click

from cli import remote
from cli.common import MOMENT, iso


@click.command()
@click.option("--since", "after", type=click.IntRange(min=0), default=0,
              help="the last id of a previous export: only what came after it")  # fmt: skip
@click.option("--format", "form", type=click.Choice(["ndjson", "csv"]), default="ndjson",
              show_default=True)  # fmt: skip
@click.option("--kind", type=click.Choice(["entries", "requests"]), default="entries",
              show_default=True)  # fmt: skip
@click.option(
    "--from", "begins", type=MOMENT, help="first moment included (ISO 8601; UTC if no offset)"
)
@click.option("--to", "ends", type=MOMENT, help="first moment excluded (ISO 8601)")
@click.option("--progress/--no-progress", default=None,
              help="a running count on stderr; default: when stderr is a terminal")  # fmt: skip
@remote.api_options
def export(
    after: int, form: str, kind: str, begins: datetime | None, ends: datetime | None,
    progress: bool | None, url: str, token: str, retry_for: float,
) -> None:  # fmt: skip
    """Write the tenant's entries (or requests) to stdout, in id order.

    As the API streams them: `tally export --since 1234 --format csv > new.csv`. Rows
    carry their `id`: pass the last one as --since to resume or to sync what is new.
    Exit 1 if the API refuses, 3 if it cannot be reached."""
    show = sys.stderr.isatty() if progress is None else progress
    lines, started, shown = 0, time.monotonic(), 0.0
    out = sys.stdout.buffer
    with remote.client(url, token, retry_for) as api:
        stream = api.export(kind=kind, format=form, after=after,
                            begins=_iso(begins), ends=_iso(ends))  # fmt: skip
        for block in stream:
            out.write(block)
            lines += block.count(b"\n")
            now = time.monotonic()
            if show and now - shown >= 0.2:
                shown = now
                rate = lines / max(now - started, 1e-9)
                click.echo(f"\r{_rows(lines, form):,} rows, {rate:,.0f}/s", err=True, nl=False)
    out.flush()
    if show:
        elapsed = time.monotonic() - started
        click.echo(f"\r{_rows(lines, form):,} rows in {elapsed:.1f} s", err=True)


def _rows(lines: int, form: str) -> int:
    """Rows written: a line each (JSON escapes newlines; a CSV field with one would count
    twice), less the CSV header."""
    return max(lines - 1, 0) if form == "csv" else lines


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)
