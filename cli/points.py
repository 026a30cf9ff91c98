"""`tally points hold|capture|release|reverse`: a points program's operations, through the API."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from tally_client import Client, Rejected, Submission, TallyError

from cli import remote


@click.group()
def points() -> None:
    """Holds and reversals of points, through the API (like `tally award`)."""


key_option = click.option("--key", "idempotency_key", help="idempotency key; default: a new one")
reason_option = click.option("--reason", help="why, kept on the entry")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _submit(
    remote_options: tuple[str, str, float],
    as_json: bool,
    operation: Callable[..., Submission],
    *args: Any,
    **fields: Any,
) -> None:
    """Call `operation` (a Client method) with the arguments; print the transaction (and the
    hold). Exit 1 if it is rejected, 2 on any other error."""
    with remote.client(*remote_options) as api:
        try:
            done = operation(api, *args, **fields)
        except Rejected as rejected:
            click.echo(f"rejected: {rejected.reason or rejected}", err=True)
            sys.exit(1)
        except TallyError as error:
            click.echo(str(error), err=True)
            sys.exit(2)
    data = done.body["data"]
    if as_json:
        click.echo(json.dumps(data))
        return
    entry, account = data["transaction"], data["account"]
    line = (
        f"{entry['type']} {entry['status']}: balance {account['balance']},"
        f" frozen {account['frozen_balance']}"
    )
    if "hold" in data:
        line += f"; hold {data['hold']['id']} {data['hold']['status']}"
    click.echo(line + f" (request {done.request_id})")


@points.command()
@click.argument("user_id")
@click.argument("amount", type=click.IntRange(min=1))
@click.option("--expires-at", help="ISO 8601 time at which the hold is released if still open")
@click.option("--points-type", help="default: TALLY_POINTS_DEFAULT_TYPE (points)")
@reason_option
@key_option
@remote.api_options
@json_option
def hold(
    user_id: str,
    amount: int,
    expires_at: str | None,
    points_type: str | None,
    reason: str | None,
    idempotency_key: str | None,
    url: str,
    token: str,
    retry_for: float,
    as_json: bool,
) -> None:
    """Hold AMOUNT points of USER_ID (external id or id): spendable → frozen_balance."""
    _submit(
        (url, token, retry_for),
        as_json,
        Client.hold,
        user_id,
        amount,
        expires_at=expires_at,
        points_type=points_type,
        reason=reason,
        idempotency_key=idempotency_key,
    )


@points.command()
@click.argument("user_id")
@click.argument("hold_id", type=int)
@click.option("--amount", type=click.IntRange(min=1), help="capture less than the hold")
@reason_option
@key_option
@remote.api_options
@json_option
def capture(
    user_id: str,
    hold_id: int,
    amount: int | None,
    reason: str | None,
    idempotency_key: str | None,
    url: str,
    token: str,
    retry_for: float,
    as_json: bool,
) -> None:
    """Capture hold HOLD_ID of USER_ID (all of it, or --amount; the rest is released)."""
    _submit(
        (url, token, retry_for),
        as_json,
        Client.capture,
        user_id,
        hold_id,
        amount,
        reason=reason,
        idempotency_key=idempotency_key,
    )


@points.command()
@click.argument("user_id")
@click.argument("hold_id", type=int)
@reason_option
@key_option
@remote.api_options
@json_option
def release(
    user_id: str,
    hold_id: int,
    reason: str | None,
    idempotency_key: str | None,
    url: str,
    token: str,
    retry_for: float,
    as_json: bool,
) -> None:
    """Release hold HOLD_ID of USER_ID: its points are spendable again."""
    _submit(
        (url, token, retry_for),
        as_json,
        Client.release,
        user_id,
        hold_id,
        reason=reason,
        idempotency_key=idempotency_key,
    )


@points.command()
@click.argument("transaction_id")
@click.option("--force", is_flag=True, help="admins: may take the balance below zero")
@reason_option
@key_option
@remote.api_options
@json_option
def reverse(
    transaction_id: str,
    force: bool,
    reason: str | None,
    idempotency_key: str | None,
    url: str,
    token: str,
    retry_for: float,
    as_json: bool,
) -> None:
    """Reverse TRANSACTION_ID (seed 002's id): one entry of the opposite amount, linked to it."""
    _submit(
        (url, token, retry_for),
        as_json,
        Client.reverse,
        transaction_id,
        reason=reason,
        allow_negative_balance=force or None,
        idempotency_key=idempotency_key,
    )
