"""What the commands that talk to a running API share: its address, a token, retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from tally_client import Client, Retries, TallyError

from cli.common import Failure

F = TypeVar("F", bound=Callable[..., Any])


def api_options(command: F) -> F:
    """--url, --token and --retry-for, in that order after the command's own options."""
    command = click.option(
        "--retry-for",
        type=click.FloatRange(min=0),
        default=Retries().deadline,
        show_default=True,
        help="seconds to retry a request that gets no answer, a 429, 502, 503 or 504",
    )(command)
    command = click.option("--token", envvar="TALLY_TOKEN", required=True, help="or TALLY_TOKEN")(
        command
    )
    return click.option(
        "--url", envvar="TALLY_URL", default="http://127.0.0.1:8000", show_default=True
    )(command)


def client(url: str, token: str, retry_for: float) -> Client:
    """A client of the API at `url` that retries with the same keys for `retry_for` seconds."""
    return Client(url, token, retries=Retries(deadline=retry_for))


def refusal(error: TallyError) -> Failure:
    """The command's failure for an answer that refused the request: its status, detail
    and every field at fault (exit 1)."""
    lines = [str(error), *(f"  {e.field}: {e.message}" for e in error.errors)]
    return Failure("\n".join(lines), error.slug or "refused")
