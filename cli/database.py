"""`tally db|tenants|users|tokens`: the commands that work on the database directly."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cli import csv_files
from cli.common import Failure, database, emit, iso, json_option, plural
from shared.intake.auth import create_token
from shared.intake.users import create_user, ensure_tenant
from shared.intake.validation import InvalidInput, UserInput, validate_user
from shared.models import DEFAULT_TENANT, Role, Token, User
from shared.platform.config import load_settings
from shared.platform.migrate import upgrade

tenant_option = click.option("--tenant", default=DEFAULT_TENANT, show_default=True)


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@json_option
def db_upgrade(as_json: bool) -> None:
    """Migrate the database to the latest schema."""
    upgrade(load_settings().database_url)
    emit(as_json, {"status": "ok"}, "database is at the latest revision")


@db.command("partitions")
@click.option(
    "--make-ahead",
    "months",
    type=click.IntRange(0, 120),
    default=None,
    help="First make the partitions of this month and the MONTHS after it (the beat keeps 3).",
)
@json_option
def db_partitions(months: int | None, as_json: bool) -> None:
    """The ledger's monthly partitions: bounds (ULIDs), estimated rows, size."""
    from shared.ledger.partitions import make_partitions_ahead, partitions

    with database() as session:
        if months is not None:
            make_partitions_ahead(session, datetime.now(UTC), months)
        listed = partitions(session)
    emit(
        as_json,
        [vars(partition) for partition in listed],
        "\n".join(
            f"{p.name:24} {p.bounds:70} {max(p.rows, 0):>12} rows {p.bytes / 2**20:10.1f} MiB"
            for p in listed
        ),
    )


@click.group()
def tenants() -> None:
    """Tenants' settings."""


@tenants.command("time-zone")
@click.argument("tenant")
@click.argument("zone")
@json_option
def tenants_time_zone(tenant: str, zone: str, as_json: bool) -> None:
    """Draw TENANT's days, weeks, months... in ZONE (an IANA name such as Europe/Berlin):
    its period totals are summed afresh (docs/periods.md)."""
    from shared.ledger.periods import UnknownZone, set_time_zone

    with database() as session:
        ensure_tenant(session, tenant)
        try:
            rows = set_time_zone(session, tenant, zone)
        except UnknownZone as error:
            raise click.BadParameter(str(error), param_hint="ZONE") from None
    emit(
        as_json,
        {"tenant": tenant, "time_zone": zone, "period_totals": rows},
        f"tenant {tenant} now counts its periods in {zone} ({plural(rows, 'period total')})",
    )


@click.group()
def users() -> None:
    """Users of a tenant."""


def find_user(session: Session, tenant: str, username: str) -> User | None:
    return session.scalars(
        select(User).where(User.tenant_id == tenant, User.username == username)
    ).one_or_none()


def user_named(session: Session, tenant: str, username: str) -> User:
    """The user `username` of `tenant`; a failure (exit 1) naming both if there is none."""
    user = find_user(session, tenant, username)
    if user is None:
        raise Failure(f"no user {username!r} in tenant {tenant!r}", "not_found")
    return user


def ensure_user(session: Session, tenant: str, data: UserInput) -> User:
    """The user `data.username` of `tenant`, created if missing (the tenant too)."""
    ensure_tenant(session, tenant)
    return find_user(session, tenant, str(data.username)) or create_user(session, tenant, data)


@users.command("create")
@click.option("--username", required=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.USER.value)
@tenant_option
@click.option("--external-id")
@click.option("--real-name", default="")
@json_option
def users_create(
    username: str, role: str, tenant: str, external_id: str | None, real_name: str, as_json: bool
) -> None:
    """Create a user (or show the existing one)."""
    with database() as session:
        data = UserInput(username=username, role=role, external_id=external_id, real_name=real_name)
        user = ensure_user(session, tenant, data)
        shown = {"id": user.id, "username": user.username, "role": user.role, "tenant": tenant}
    emit(as_json, shown, f"user {shown['id']} {username} ({shown['role']}) in tenant {tenant}")


USER_COLUMNS = ("username", "external_id", "real_name", "email", "avatar", "description", "role")


class ImportRefused(Exception):
    """Bad rows: nothing of the file is written."""


def _import_rows(session: Session, tenant: str, path: Path) -> tuple[list[str], list[str]]:
    """Create the file's users; return (created, skipped) or raise ImportRefused."""
    errors: list[str] = []
    created: list[str] = []
    skipped: list[str] = []
    seen: set[str] = set()
    ensure_tenant(session, tenant)
    try:
        for number, row in csv_files.rows(path, USER_COLUMNS, "username", header=True):
            try:
                data = validate_user({k: row.get(k) for k in USER_COLUMNS})
            except InvalidInput as error:
                errors += [f"row {number}: {e.field}: {e.message}" for e in error.errors]
                continue
            if data.username in seen:
                errors.append(f"row {number}: username: repeated in the file")
                continue
            seen.add(str(data.username))
            if find_user(session, tenant, str(data.username)) is not None:
                skipped.append(str(data.username))
                continue
            try:
                create_user(session, tenant, data)
            except InvalidInput as error:
                errors += [f"row {number}: {e.field}: {e.message}" for e in error.errors]
                continue
            created.append(str(data.username))
    except csv_files.UnreadableFile as unreadable:
        errors += unreadable.problems
    if errors:
        raise ImportRefused(errors)
    return created, skipped


@users.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@tenant_option
@json_option
def users_import(path: Path, tenant: str, as_json: bool) -> None:
    """Create users from a CSV file, all or nothing; existing usernames are skipped.

    The first row names the columns: username, and any of external_id, real_name,
    email, avatar, description, role. Exit 1 naming every bad row, and nothing written.
    """
    try:
        with database() as session:
            created, skipped = _import_rows(session, tenant, path)
    except ImportRefused as refused:
        lines = refused.args[0]
        emit(as_json, {"created": 0, "errors": lines}, "nothing imported:\n  " + "\n  ".join(lines))
        raise SystemExit(1) from None
    summary = {"created": len(created), "skipped": skipped}
    text = f"created {plural(len(created), 'user')}" + (
        f"; skipped existing: {', '.join(skipped)}" if skipped else ""
    )
    emit(as_json, summary, text)


@click.group()
def tokens() -> None:
    """API tokens (shown once, stored as hashes)."""


DURATION = re.compile(r"(\d+)([smhdw])")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _duration(
    _: click.Context | None, __: click.Parameter | None, value: str | None
) -> timedelta | None:
    """`30d`, `12h`, `90m`, `3600s` or `2w` as a timedelta."""
    if value is None:
        return None
    match = DURATION.fullmatch(value.strip())
    if match is None or int(match[1]) == 0:
        raise click.BadParameter("give a number and a unit, such as 30d, 12h, 90m or 2w")
    return timedelta(**{DURATION_UNITS[match[2]]: int(match[1])})


@tokens.command("create")
@click.option("--username", required=True)
@tenant_option
@click.option("--name", default="")
@click.option("--expires-in", callback=_duration, help="e.g. 30d, 12h, 90m; default: never")
@json_option
def tokens_create(
    username: str, tenant: str, name: str, expires_in: timedelta | None, as_json: bool
) -> None:
    """Create a token for a user and print it once."""
    expires_at = datetime.now(UTC) + expires_in if expires_in else None
    with database() as session:
        user = user_named(session, tenant, username)
        token, plain = create_token(session, user, name, expires_at)
        data = {"id": token.id, "token": plain, "username": username, "role": user.role,
                "expires_at": expires_at}  # fmt: skip
    emit(as_json, data, plain)


@tokens.command("list")
@json_option
def tokens_list(as_json: bool) -> None:
    """List tokens (never their values)."""
    with database() as session:
        rows = session.execute(
            select(Token, User.username).join(User, User.id == Token.user_id).order_by(Token.id)
        ).all()
        data = [
            {
                "id": token.id,
                "tenant": token.tenant_id,
                "username": username,
                "name": token.name,
                "created_at": token.created_at,
                "expires_at": token.expires_at,
                "revoked_at": token.revoked_at,
                "last_used_at": token.last_used_at,
                "state": _token_state(token),
            }
            for token, username in rows
        ]
        lines = [
            f"{token.id:>5}  {token.tenant_id:<12} {username:<20} {token.name:<16} "
            f"{_token_state(token):<8} last used {_when(token.last_used_at)}"
            for token, username in rows
        ]
    emit(as_json, data, "\n".join(lines) or "no tokens")


def _token_state(token: Token) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
        return "expired"
    return "active"


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else iso(moment.replace(microsecond=0))


@tokens.command("revoke")
@click.argument("token_id", type=int)
@json_option
def tokens_revoke(token_id: int, as_json: bool) -> None:
    """Revoke a token by its id."""
    with database() as session:
        token = session.get(Token, token_id)
        if token is None:
            raise Failure(f"no token {token_id}", "not_found")
        token.revoked_at = token.revoked_at or func.now()
    emit(as_json, {"id": token_id, "revoked": True}, f"token {token_id} revoked")
