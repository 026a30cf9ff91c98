"""`tally export`: a tenant's ledger entries (or requests) to stdout, through the API."""

from __future__ import annotations

import sys
import time
from datetime import datetime

import click
from tally_client import TallyError

from cli import remote


@click.command()
@click.option("--since", "after", type=click.IntRange(min=0), default=0,
              help="the last id of a previous export: only what came after it")  # fmt: skip
@click.option("--format", "form", type=click.Choice(["ndjson", "csv"]), default="ndjson",
              show_default=True)  # fmt: skip
@click.option("--kind", type=click.Choice(["entries", "requests"]), default="entries",
              show_default=True)  # fmt: skip
@click.option("--from", "begins", type=click.DateTime(), help="first moment included (UTC)")
@click.option("--to", "ends", type=click.DateTime(), help="first moment excluded (UTC)")
@click.option("--progress/--no-progress", default=None,
              help="a running count on stderr; default: when stderr is a terminal")  # fmt: skip
@remote.api_options
def export(
    after: int, form: str, kind: str, begins: datetime | None, ends: datetime | None,
    progress: bool | None, url: str, token: str, retry_for: float,
) -> None:  # fmt: skip
    """Write the tenant's entries (or requests) in id order to stdout, as the API streams
    them: `tally export --since 1234 --format csv > new.csv`. Rows carry their `id`: pass
    the last one as --since to resume or to sync what is new. Exit 2 if the API refuses."""
    show = sys.stderr.isatty() if progress is None else progress
    lines, started, shown = 0, time.monotonic(), 0.0
    out = sys.stdout.buffer
    with remote.client(url, token, retry_for) as api:
        try:
            stream = api.export(kind=kind, format=form, after=after,
                                begins=_utc(begins), ends=_utc(ends))  # fmt: skip
            for block in stream:
                out.write(block)
                lines += block.count(b"\n")
                now = time.monotonic()
                if show and now - shown >= 0.2:
                    shown = now
                    rate = lines / max(now - started, 1e-9)
                    click.echo(f"\r{_rows(lines, form):,} rows, {rate:,.0f}/s", err=True, nl=False)
        except TallyError as error:
            click.echo(str(error), err=True)
            sys.exit(2)
    out.flush()
    if show:
        elapsed = time.monotonic() - started
        click.echo(f"\r{_rows(lines, form):,} rows in {elapsed:.1f} s", err=True)


def _rows(lines: int, form: str) -> int:
    """Rows written: a line each (JSON escapes newlines; a CSV field with one would count
    twice), less the CSV header."""
    return max(lines - 1, 0) if form == "csv" else lines


def _utc(moment: datetime | None) -> str | None:
    """click's DateTime is naive: the CLI's times are UTC."""
    return None if moment is None else moment.isoformat() + "Z"
