"""`tally award FILE.csv`: upload contest awards, watch the batch with a progress bar."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import requests

POLL_SECONDS = 0.2
FINAL = ("completed", "completed_with_rejections")
CONTEXT_COLUMN = 3  # username,user_id,variation_points,context,comment


def with_default_context(text: str, context: str | None) -> str:
    """The file with `context` written into rows that have none."""
    if not context:
        return text
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for cells in csv.reader(io.StringIO(text)):
        if len(cells) > CONTEXT_COLUMN and not cells[CONTEXT_COLUMN].strip():
            cells[CONTEXT_COLUMN] = context
        writer.writerow(cells)
    return out.getvalue()


def _rejected(http: requests.Session, status_url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    url: str | None = f"{status_url}/items?status=rejected&limit=1000"
    while url:
        page = http.get(url, timeout=30).json()
        items += page["results"]
        url = page["next"]
    return items


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--context", help="reputation_context for rows that have none")
@click.option("--url", envvar="TALLY_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="TALLY_TOKEN", required=True, help="or TALLY_TOKEN")
@click.option("--key", help="the batch's idempotency key (default: derived from the file)")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def award(
    path: Path, context: str | None, url: str, token: str, key: str | None, as_json: bool
) -> None:
    """Award the rows of a community CSV file as one batch; exit 1 if any row is rejected."""
    body = with_default_context(path.read_text(encoding="utf-8-sig"), context)
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        headers = {"Idempotency-Key": key} if key else {}
        response = http.post(
            f"{url.rstrip('/')}/api/v2/score/import/",
            files={"csv_file": (path.name, body.encode(), "text/csv")},
            data={"dry_run": "false"},
            headers=headers,
            timeout=300,
        )
        if response.status_code != 202:
            click.echo(f"refused ({response.status_code}):", err=True)
            for error in response.json().get("errors", []):
                click.echo(f"  row {error.get('row_number')}: {error.get('field')}: "
                           f"{error.get('message')}", err=True)  # fmt: skip
            sys.exit(2)
        status_url = response.headers["Location"]
        status = response.json()
        with click.progressbar(length=status["total"], label="applying", file=sys.stderr) as bar:
            done = 0
            while True:
                final = status["counts"]["completed"] + status["counts"]["rejected"]
                bar.update(final - done)
                done = final
                if status["status"] in FINAL:
                    break
                time.sleep(POLL_SECONDS)
                status = http.get(status_url, timeout=30).json()
        rejected = _rejected(http, status_url) if status["counts"]["rejected"] else []
    summary = {"batch_id": status["id"], "status": status["status"],
               "counts": status["counts"], "rejected": rejected}  # fmt: skip
    if as_json:
        click.echo(json.dumps(summary))
    else:
        counts = status["counts"]
        click.echo(f"batch {status['id']}: {counts['completed']} applied, "
                   f"{counts['rejected']} rejected")  # fmt: skip
        for item in rejected:
            click.echo(f"  rejected {item['idempotency_key']}: {item['error']['message']}")
    sys.exit(1 if rejected else 0)
