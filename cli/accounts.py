"""`tally accounts freeze|unfreeze`: an account's status, from the command line."""

from __future__ import annotations

from collections.abc import Callable

import click

from cli.common import Failure, database, emit, json_option
from cli.database import user_named
from shared.intake.accounts import accounts_of, change_status
from shared.models import DEFAULT_TENANT, AccountStatus
from shared.platform.config import load_settings


@click.group()
def accounts() -> None:
    """Freeze or unfreeze a user's points accounts.

    A frozen account's requests are rejected; every account of the user changes, or only
    that of --points-type. None is created."""


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
    with database() as session:
        user = user_named(session, tenant, username)
        found = accounts_of(session, user.id, points_type)
        if not found:
            kind = f"{points_type} account" if points_type else "account"
            verb = "freeze" if status == AccountStatus.FROZEN else "unfreeze"
            raise Failure(f"{username} has no {kind}: nothing to {verb}", "not_found")
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
    lines = [f"{username}'s {changed['points_type']} account {changed['account_id']}"
             f" is {status.value}" for changed in shown]  # fmt: skip
    emit(as_json, {"accounts": shown}, "\n".join(lines))


OPTIONS = (
    click.option("--username", required=True),
    click.option("--points-type", help="only this type's account (default: every account)"),
    click.option("--tenant", default=DEFAULT_TENANT),
    click.option("--reason", default="", help="why, logged with the change"),
    json_option,
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
