"""`tally accounts freeze|unfreeze`: an account's status, from the command line."""

from __future__ import annotations

import json
from collections.abc import Callable

import click
from sqlalchemy import select

from shared.accounts import set_status
from shared.config import load_settings
from shared.db import make_engine, make_session_factory, transaction
from shared.models import DEFAULT_TENANT, AccountStatus, User


@click.group()
def accounts() -> None:
    """Points accounts: freeze one (its requests are rejected) or unfreeze it."""


def _set(
    username: str,
    points_type_name: str | None,
    tenant: str,
    reason: str,
    status: AccountStatus,
    as_json: bool,
) -> None:
    settings = load_settings()
    points_type = settings.points_type(points_type_name or settings.points_default_type)
    if points_type is None:
        known = ", ".join(settings.points_types)
        raise click.BadParameter(f"unknown points type; known: {known}", param_hint="--points-type")
    engine = make_engine(settings.database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            user = session.scalars(
                select(User).where(User.tenant_id == tenant, User.username == username)
            ).one_or_none()
            if user is None:
                raise click.ClickException(f"no user {username!r} in tenant {tenant!r}")
            account = set_status(
                session, tenant, user.id, points_type, status, by="tally accounts", reason=reason
            )
            shown = {
                "account_id": account.id,
                "username": username,
                "tenant": tenant,
                "points_type": account.points_type,
                "status": account.status,
                "balance": account.balance,
                "frozen_balance": account.frozen_balance,
            }
    finally:
        engine.dispose()
    text = f"{username}'s {shown['points_type']} account {shown['account_id']} is {status.value}"
    click.echo(json.dumps(shown) if as_json else text)


OPTIONS = (
    click.option("--username", required=True),
    click.option("--points-type", help="default: TALLY_POINTS_DEFAULT_TYPE (points)"),
    click.option("--tenant", default=DEFAULT_TENANT),
    click.option("--reason", default="", help="why, logged with the change"),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
)


def _options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(OPTIONS):
        command = option(command)
    return command


@accounts.command()
@_options
def freeze(username: str, points_type: str | None, tenant: str, reason: str, as_json: bool) -> None:
    """Freeze an account: its requests are rejected (account_frozen) until it is unfrozen;
    tally's own expiries and hold timeouts still apply."""
    _set(username, points_type, tenant, reason, AccountStatus.FROZEN, as_json)


@accounts.command()
@_options
def unfreeze(
    username: str, points_type: str | None, tenant: str, reason: str, as_json: bool
) -> None:
    """Unfreeze an account: new requests apply again; those rejected meanwhile stay rejected."""
    _set(username, points_type, tenant, reason, AccountStatus.ACTIVE, as_json)
