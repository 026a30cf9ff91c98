"""`tally`: one command for operators and scripts (every command takes --json).

The root imports nothing heavy: each command's module is imported when it runs, so that
`tally --help` answers at once, and its help lists the commands by what they talk to.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

import click

from cli import connection
from cli.common import Failure, Misconfigured, ServerUnreachable, to_json


@dataclass(frozen=True)
class Entry:
    """A command of the root: where it lives, the help section it is listed under, and
    its one-line help (tests/cli/test_main.py checks that it is the command's own)."""

    module: str
    section: str
    summary: str


API = "Through the API (TALLY_URL, TALLY_TOKEN)"
DATABASE = "On the database and Redis (TALLY_DATABASE_URL, TALLY_REDIS_URL)"
PROCESSES = "Processes"
COMMANDS = {
    "award": Entry(
        "cli.award",
        API,
        "Award every row of a community CSV file, in batches; exit 1 if any row is rejected.",
    ),
    "batches": Entry("cli.batches", API, "Bulk batches: their status and rejected items."),
    "export": Entry(
        "cli.export", API, "Write the tenant's entries (or requests) to stdout, in id order."
    ),
    "points": Entry("cli.points", API, "Adjust, hold and reverse points; read balances."),
    "accounts": Entry("cli.accounts", DATABASE, "Freeze or unfreeze a user's points accounts."),
    "db": Entry("cli.database", DATABASE, "Database schema."),
    "reconcile": Entry(
        "cli.operations",
        DATABASE,
        "Check the ledger invariants everywhere; exit 1 on any violation.",
    ),
    "status": Entry(
        "cli.operations",
        DATABASE,
        "Queue depths, outbox backlog, oldest pending age and the workers of each lane.",
    ),
    "tenants": Entry("cli.database", DATABASE, "Tenants' settings."),
    "tokens": Entry("cli.database", DATABASE, "API tokens (shown once, stored as hashes)."),
    "users": Entry("cli.database", DATABASE, "Users of a tenant."),
    "webhooks": Entry(
        "cli.webhooks",
        DATABASE,
        "Webhook endpoints: signed deliveries of the tenant's events (docs/events.md).",
    ),
    "api": Entry(
        "cli.processes",
        PROCESSES,
        "Serve the HTTP API (granian, ASGI) in the foreground; its /metrics too.",
    ),
    "beat": Entry(
        "cli.processes",
        PROCESSES,
        "Run Celery beat: the outbox relay, lot expiries and hold timeouts.",
    ),
    "flower": Entry(
        "cli.processes",
        PROCESSES,
        "Run Flower, the Celery monitor, its lines in tally's JSON (arguments go to Flower).",
    ),
    "run": Entry(
        "cli.run",
        PROCESSES,
        "Run the API, the workers and beat in the foreground; Ctrl-C stops everything.",
    ),
    "worker": Entry(
        "cli.processes", PROCESSES, "Run a Celery worker (extra arguments go to `celery worker`)."
    ),
}
# Commands that start servers rather than talk to them: they never read `.tally/env`
# (`tally run` would take a stopped stack's URLs for servers that are up).
STARTS_SERVERS = {"run"}
JSON = "tally.json"


class Tally(click.Group):
    """The root: lazy commands, help by section, one exit code per outcome, and errors in
    JSON when the command was given --json."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        command: click.Command = getattr(importlib.import_module(entry.module), name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for section in (API, DATABASE, PROCESSES):
            rows = [(name, e.summary) for name, e in sorted(COMMANDS.items())
                    if e.section == section]  # fmt: skip
            with formatter.section(section):
                formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[JSON] = "--json" in args
        if args and args[0] not in STARTS_SERVERS:
            connection.load()
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as error:
            if not ctx.meta.get(JSON):
                raise
            _fail(getattr(error, "code", "usage" if isinstance(error, click.UsageError)
                          else "refused"), error.format_message(), error.exit_code)  # fmt: skip
        except Exception as error:
            failure = _failure_of(error)
            if failure is None:
                raise
            if not ctx.meta.get(JSON):
                raise failure from None
            _fail(failure.code, failure.message, failure.exit_code)


def _failure_of(error: Exception) -> Failure | None:
    """A server that could not be reached (exit 3), an API that refused (exit 1), or a
    setting that does not parse (exit 2); None for anything else, a bug, which keeps its
    traceback."""
    config = sys.modules.get("shared.platform.config")
    if config is not None and isinstance(error, config.ConfigurationError):
        return Misconfigured(str(error))
    found = connection.unreachable(error)
    if found is not None:
        return ServerUnreachable(found)
    client = sys.modules.get("tally_client")
    if client is not None and isinstance(error, client.TallyError):
        from cli.remote import refusal

        return refusal(error)
    return None


def _fail(code: str, message: str, exit_code: int) -> None:
    click.echo(to_json({"error": {"code": code, "message": message}}), err=True)
    sys.exit(exit_code)


@click.group(cls=Tally)
@click.version_option(package_name="tally", prog_name="tally")
def cli() -> None:
    """tally: an asynchronous points and reputation ledger.

    \b
    Every command finds its servers the same way: the environment's TALLY_* variables,
    else the file `tally run` writes (.tally/env, in this folder or one above it;
    TALLY_ENV_FILE names another), else 127.0.0.1. Exit codes: 0 done, 1 the check
    found something or the server refused, 2 a usage error, 3 a server could not be
    reached (the message names the URL and where it came from).
    """
