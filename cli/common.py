"""What every command shares: its exit codes, `--json`, how it prints, and its database."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class ExitCode(IntEnum):
    """What a command's exit status means (README: "Exit codes")."""

    OK = 0
    # The check found something (reconcile, status), or the server refused the request.
    FOUND = 1
    # click's own: a bad option or argument.
    USAGE = 2
    # The API, the database or Redis could not be reached: nothing was checked or sent.
    UNREACHABLE = 3


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


class Failure(click.ClickException):
    """The command could not do what it was asked (exit 1): a message, and a code for --json."""

    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


class ServerUnreachable(Failure):
    """A server could not be reached (exit 3): nothing was checked or sent."""

    exit_code = ExitCode.UNREACHABLE

    def __init__(self, message: str) -> None:
        super().__init__(message, "unreachable")


class Misconfigured(Failure):
    """A TALLY_* variable's value does not parse (exit 2, as any usage error)."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message, "configuration")


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC, as the API writes times: 2026-12-03T22:54:05.123456Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Moment(click.ParamType):  # type: ignore[type-arg]  # generic in click 8.2+ only
    """An ISO 8601 time (`2026-03-01`, `2026-03-01T12:00:00.5+01:00`, `...Z`); UTC if it
    names no offset."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(
                f"{value!r} is not an ISO 8601 time, such as 2026-03-01T09:30:00Z", param, ctx
            )
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


MOMENT = Moment()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return str(value)


def to_json(data: Any) -> str:
    return json.dumps(data, default=_plain)


def emit(as_json: bool, data: Any, text: str | Callable[[], str]) -> None:
    """`data` as JSON with --json, else `text` (a callable is called only then)."""
    click.echo(to_json(data) if as_json else text if isinstance(text, str) else text())


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 user`, `2 users`, `0 entries` (with nouns="entries")."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


@contextmanager
def database() -> Iterator[Session]:
    """A session on TALLY_DATABASE_URL in one transaction, committed if the block ends
    without an error; the engine goes with it."""
    from shared.platform.config import load_settings
    from shared.platform.db import make_engine, make_session_factory, transaction

    settings = load_settings()
    engine = make_engine(
        settings.database_url, prepared_statements=settings.database_prepared_statements
    )
    try:
        with transaction(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()
