"""`tally accounts freeze|unfreeze`: an account's status, from the command line."""

from __future__ import annotations

import json
from collections.abc import Callable

import click
from sqlalchemy import select

from shared.intake.accounts import accounts_of, change_status
from shared.models import DEFAULT_TENANT, AccountStatus, User
from shared.platform.config import load_settings
from shared.platform.db import make_engine, make_session_factory, transaction


@click.group()
def accounts() -> None:
    """Points accounts: freeze a user's accounts (their requests are rejected) or unfreeze
    them; every account of the user, or only that of --points-type. None is created."""


def _set(
    username: str,
    points_type: str | None,
    tenant: str,
    reason: str,
    status: AccountStatus,
    as_json: bool,
) -> None:
    settings = load_settings()
    if points_type is not None and settings.points_type(points_type) is None:
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
            found = accounts_of(session, user.id, points_type)
            if not found:
                kind = f"{points_type} account" if points_type else "account"
                verb = "freeze" if status == AccountStatus.FROZEN else "unfreeze"
                raise click.ClickException(f"{username} has no {kind}: nothing to {verb}")
            for account in found:
                change_status(session, account, status, by="tally accounts", reason=reason)
            shown = [
                {
                    "account_id": account.id, "username": username, "tenant": tenant,
                    "points_type": account.points_type, "status": account.status,
                    "balance": account.balance, "frozen_balance": account.frozen_balance,
                }
                for account in found
            ]  # fmt: skip
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({"accounts": shown}))
        return
    for changed in shown:
        click.echo(f"{username}'s {changed['points_type']} account {changed['account_id']}"
                   f" is {status.value}")  # fmt: skip


OPTIONS = (
    click.option("--username", required=True),
    click.option("--points-type", help="only this type's account (default: every account)"),
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
