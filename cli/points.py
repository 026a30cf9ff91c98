"""`tally points adjust|balance|hold|capture|release|reverse`: a points program's operations,
through the API (seed 002's routes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

import click
from tally_client import Client, Rejected, Submission

from cli import remote
from cli.common import MOMENT, Failure, emit, iso, json_option


@click.group()
def points() -> None:
    """Adjust, hold and reverse points; read balances."""


key_option = click.option("--key", "idempotency_key", help="idempotency key; default: a new one")
reason_option = click.option("--reason", help="why, kept on the entry")
points_type_option = click.option(
    "--points-type", help="default: TALLY_POINTS_DEFAULT_TYPE (points)"
)


def _submit(
    remote_options: tuple[str, str, float],
    as_json: bool,
    operation: Callable[..., Submission],
    *args: Any,
    **fields: Any,
) -> None:
    """Call `operation` (a Client method) with the arguments; print the transaction (and the
    hold). Exit 1 if it is rejected or refused, 3 if the API cannot be reached."""
    with remote.client(*remote_options) as api:
        try:
            done = operation(api, *args, **fields)
        except Rejected as rejected:
            reason = rejected.reason or "rejected"
            raise Failure(f"rejected ({reason}): {rejected.detail}", reason) from None
    data = done.body["data"]

    def line() -> str:
        entry, account = data["transaction"], data["account"]
        text = (
            f"{entry['type']} {entry['status']}: balance {account['balance']},"
            f" frozen {account['frozen_balance']}"
        )
        if "hold" in data:
            text += f"; hold {data['hold']['id']} {data['hold']['status']}"
        return text + f" (request {done.request_id})"

    emit(as_json, data, line)


@points.command()
@click.argument("user_id")
@click.argument("amount", type=int)
@points_type_option
@click.option("--expires-at", help="ISO 8601 time at which these points expire")
@click.option("--force", is_flag=True, help="admins: may take the balance below zero")
@reason_option
@key_option
@remote.api_options
@json_option
def adjust(
    user_id: str,
    amount: int,
    points_type: str | None,
    expires_at: str | None,
    force: bool,
    reason: str | None,
    idempotency_key: str | None,
    url: str,
    token: str,
    retry_for: float,
    as_json: bool,
) -> None:
    """Add AMOUNT points to USER_ID (external id or id), or take them with a negative
    AMOUNT (`tally points adjust 42 -- -5`): a one-off correction."""
    _submit(
        (url, token, retry_for),
        as_json,
        Client.points_adjust,
        user_id,
        amount,
        points_type=points_type,
        expires_at=expires_at,
        reason=reason,
        allow_negative_balance=force or None,
        idempotency_key=idempotency_key,
    )


@points.command()
@click.argument("user_id")
@click.option(
    "--as-of", type=MOMENT, help="as the accounts stood then (ISO 8601; UTC if no offset)"
)
@remote.api_options
@json_option
def balance(
    user_id: str, as_of: datetime | None, url: str, token: str, retry_for: float, as_json: bool
) -> None:
    """USER_ID's balances (external id or id): every points type, now or --as-of a moment."""
    moment = None if as_of is None else iso(as_of)
    with remote.client(url, token, retry_for) as api:
        standings = api.balances(user_id, as_of=moment)
    shown = [asdict(standing) for standing in standings]

    def lines() -> str:
        return (
            "\n".join(
                f"{s.points_type}: balance {s.balance}, frozen {s.frozen_balance}, earned"
                f" {s.total_earned}, spent {s.total_spent}, expired {s.expired_points}"
                for s in standings
            )
            or f"user {user_id} has no points accounts"
        )

    emit(as_json, {"user_id": user_id, "as_of": moment, "balances": shown}, lines)


@points.command()
@click.argument("user_id")
@click.argument("amount", type=click.IntRange(min=1))
@click.option("--expires-at", help="ISO 8601 time at which the hold is released if still open")
@points_type_option
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
    """Reverse TRANSACTION_ID (an id of the points API): one entry of the opposite amount,
    linked to it."""
    _submit(
        (url, token, retry_for),
        as_json,
        Client.reverse,
        transaction_id,
        reason=reason,
        allow_negative_balance=force or None,
        idempotency_key=idempotency_key,
    )
