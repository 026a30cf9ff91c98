"""`tally`: one command for operators and scripts (every command takes --json)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.flow.dispatch import Lane, queue_of
from shared.intake.auth import create_token
from shared.intake.users import create_user, ensure_tenant
from shared.intake.validation import InvalidInput, UserInput, validate_user
from shared.models import DEFAULT_TENANT, Role, Token, User
from shared.platform.config import METRICS_FOLDER_ENV, load_settings
from shared.platform.db import make_engine, make_session_factory, transaction
from shared.platform.migrate import upgrade


def _emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, default=str) if as_json else text)


@contextmanager
def _database() -> Iterator[sessionmaker[Session]]:
    """Sessions on TALLY_DATABASE_URL, for one command."""
    engine = make_engine(load_settings().database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def cli() -> None:
    """tally: an asynchronous points and reputation ledger."""


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@json_option
def db_upgrade(as_json: bool) -> None:
    """Migrate the database to the latest schema."""
    upgrade(load_settings().database_url)
    _emit(as_json, {"status": "ok"}, "database is at the latest revision")


@cli.group()
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

    with _database() as sessions, transaction(sessions) as session:
        ensure_tenant(session, tenant)
        try:
            rows = set_time_zone(session, tenant, zone)
        except UnknownZone as error:
            raise click.BadParameter(str(error), param_hint="ZONE") from None
    _emit(
        as_json,
        {"tenant": tenant, "time_zone": zone, "period_totals": rows},
        f"tenant {tenant} now counts its periods in {zone} ({rows} period totals)",
    )


@cli.group()
def users() -> None:
    """Users of a tenant."""


def ensure_user(session: Session, tenant: str, data: UserInput) -> User:
    """The user `data.username` of `tenant`, created if missing (the tenant too)."""
    ensure_tenant(session, tenant)
    user = session.scalars(
        select(User).where(User.tenant_id == tenant, User.username == data.username)
    ).one_or_none()
    return user or create_user(session, tenant, data)


@users.command("create")
@click.option("--username", required=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.USER.value)
@click.option("--tenant", default=DEFAULT_TENANT)
@click.option("--external-id")
@click.option("--real-name", default="")
@json_option
def users_create(
    username: str, role: str, tenant: str, external_id: str | None, real_name: str, as_json: bool
) -> None:
    """Create a user (or show the existing one)."""
    with _database() as sessions, transaction(sessions) as session:
        data = UserInput(username=username, role=role, external_id=external_id, real_name=real_name)
        user = ensure_user(session, tenant, data)
        shown = {"id": user.id, "username": user.username, "role": user.role, "tenant": tenant}
    _emit(as_json, shown, f"user {shown['id']} {username} ({shown['role']}) in tenant {tenant}")


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
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "username" not in reader.fieldnames:
            raise ImportRefused([f"line 1: a header row naming {', '.join(USER_COLUMNS)}"])
        for row in reader:
            line = reader.line_num
            try:
                data = validate_user({k: row.get(k) for k in USER_COLUMNS})
            except InvalidInput as error:
                errors += [f"line {line}: {e.field}: {e.message}" for e in error.errors]
                continue
            if data.username in seen:
                errors.append(f"line {line}: username: repeated in the file")
                continue
            seen.add(str(data.username))
            existing = session.scalar(
                select(User.id).where(User.tenant_id == tenant, User.username == data.username)
            )
            if existing is not None:
                skipped.append(str(data.username))
                continue
            try:
                create_user(session, tenant, data)
            except InvalidInput as error:
                errors += [f"line {line}: {e.field}: {e.message}" for e in error.errors]
                continue
            created.append(str(data.username))
    if errors:
        raise ImportRefused(errors)
    return created, skipped


@users.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default=DEFAULT_TENANT)
@json_option
def users_import(path: Path, tenant: str, as_json: bool) -> None:
    """Create users from a CSV file, all or nothing; existing usernames are skipped."""
    try:
        with _database() as sessions, transaction(sessions) as session:
            created, skipped = _import_rows(session, tenant, path)
    except ImportRefused as refused:
        lines = refused.args[0]
        _emit(
            as_json, {"created": 0, "errors": lines}, "nothing imported:\n  " + "\n  ".join(lines)
        )
        sys.exit(1)
    summary = {"created": len(created), "skipped": skipped}
    text = f"created {len(created)} users" + (
        f"; skipped existing: {', '.join(skipped)}" if skipped else ""
    )
    _emit(as_json, summary, text)


@cli.group()
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
@click.option("--tenant", default=DEFAULT_TENANT)
@click.option("--name", default="")
@click.option("--expires-in", callback=_duration, help="e.g. 30d, 12h, 90m; default: never")
@json_option
def tokens_create(
    username: str, tenant: str, name: str, expires_in: timedelta | None, as_json: bool
) -> None:
    """Create a token for a user and print it once."""
    expires_at = datetime.now(UTC) + expires_in if expires_in else None
    with _database() as sessions, transaction(sessions) as session:
        user = session.scalars(
            select(User).where(User.tenant_id == tenant, User.username == username)
        ).one_or_none()
        if user is None:
            raise click.ClickException(f"no user {username!r} in tenant {tenant!r}")
        token, plain = create_token(session, user, name, expires_at)
        data = {"id": token.id, "token": plain, "username": username, "role": user.role,
                "expires_at": expires_at}  # fmt: skip
    _emit(as_json, data, plain)


@tokens.command("list")
@json_option
def tokens_list(as_json: bool) -> None:
    """List tokens (never their values)."""
    with _database() as sessions, sessions() as session:
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
    _emit(as_json, data, "\n".join(lines) or "no tokens")


def _token_state(token: Token) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
        return "expired"
    return "active"


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@tokens.command("revoke")
@click.argument("token_id", type=int)
@json_option
def tokens_revoke(token_id: int, as_json: bool) -> None:
    """Revoke a token by its id."""
    from sqlalchemy import func

    with _database() as sessions, transaction(sessions) as session:
        token = session.get(Token, token_id)
        if token is None:
            raise click.ClickException(f"no token {token_id}")
        token.revoked_at = token.revoked_at or func.now()
    _emit(as_json, {"id": token_id, "revoked": True}, f"token {token_id} revoked")


def _celery(command: str, *args: str) -> None:
    """Become `celery -A worker.celery_app <command>`."""
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", command,
            "--loglevel", "INFO", *args]  # fmt: skip
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@contextmanager
def _metrics_folder(group: str) -> Iterator[None]:
    """A folder of its own for this process group's metric files, while it runs.

    prometheus_client reads it when first imported, so this comes before any import of
    it; a folder inherited from a parent (`tally run`, a shell) is replaced, so that two
    groups never add up each other's samples (see shared.platform.metrics).
    """
    folder = tempfile.mkdtemp(prefix=f"tally-metrics-{group}-")
    os.environ[METRICS_FOLDER_ENV] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@cli.command()
@click.option("--bind", help="HOST:PORT (default TALLY_BIND, 127.0.0.1:8000)")
@click.option("--processes", type=int, help="processes (default TALLY_API_PROCESSES, 2)")
@click.option("--threads", type=int, help="threads per process (default TALLY_API_THREADS, 16)")
def api(bind: str | None, processes: int | None, threads: int | None) -> None:
    """Serve the HTTP API (granian, ASGI) in the foreground; its /metrics too."""
    given = {"bind": bind, "api_processes": processes, "api_threads": threads}
    with _metrics_folder("api"):
        from api.server import serve

        serve(load_settings().with_overrides({k: v for k, v in given.items() if v}))


LANE_NAMES = [lane.value for lane in Lane]


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--lanes",
    default=",".join(LANE_NAMES),
    show_default=True,
    help="Comma-separated lanes whose queues this worker consumes: interactive (single "
    "adjustments), bulk (batch items), relay (the outbox relay), events (the event "
    "log's jobs; such a worker also runs the event pump), webhooks (deliveries).",
)
@click.option(
    "--metrics-bind",
    help="HOST:PORT where this worker serves its /metrics, or '' for none "
    "(default TALLY_METRICS_BIND, 127.0.0.1:9808).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(lanes: str, metrics_bind: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`).

    Run one worker for interactive,relay, one for bulk and one for events,webhooks,
    so that single adjustments never wait behind a batch or a slow receiver; each is named
    after its lanes (`bulk@host`).
    """
    chosen = [name.strip() for name in lanes.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(LANE_NAMES))
    if unknown or not chosen:
        raise click.BadParameter(f"choose from {', '.join(LANE_NAMES)}", param_hint="--lanes")
    if metrics_bind is not None:
        os.environ["TALLY_METRICS_BIND"] = metrics_bind
    base = load_settings().queue_name
    queues = ",".join(queue_of(base, Lane(name)) for name in chosen)
    argv = ["worker", "--loglevel", "INFO", "--queues", queues,
            "--hostname", f"{'+'.join(chosen)}@%h", *celery_args]  # fmt: skip
    # In this process (not exec'd), so that the metrics folder goes when the worker does.
    with _metrics_folder("worker"):
        from worker.celery_app import app

        code = app.start(argv)
    sys.exit(code or 0)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run Celery beat: the outbox relay, lot expiries and hold timeouts."""
    _celery("beat", *celery_args)


from cli.accounts import accounts  # noqa: E402
from cli.award import award  # noqa: E402
from cli.batches import batches  # noqa: E402
from cli.export import export  # noqa: E402
from cli.operations import reconcile, status  # noqa: E402
from cli.points import points  # noqa: E402
from cli.run import run  # noqa: E402
from cli.webhooks import webhooks  # noqa: E402

cli.add_command(run)
cli.add_command(accounts)
cli.add_command(points)
cli.add_command(award)
cli.add_command(batches)
cli.add_command(reconcile)
cli.add_command(status)
cli.add_command(webhooks)
cli.add_command(export)
