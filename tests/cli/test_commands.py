"""The `tally` command: users and tokens against the test database."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import cli
from shared.auth import authenticate
from shared.db import make_engine, make_session_factory
from shared.models import Token
from tests.conftest import Services


@pytest.fixture
def run(services: Services):  # type: ignore[no-untyped-def]
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})

    def invoke(*args: str) -> dict | list:
        result = runner.invoke(cli, [*args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    return invoke


def test_users_and_tokens_round_trip(run, services: Services) -> None:  # type: ignore[no-untyped-def]
    user = run(
        "users",
        "create",
        "--username",
        "cli.admin",
        "--role",
        "admin",
        "--tenant",
        "cli-tenant",
        "--real-name",
        "Cli Admin",
    )
    assert user["role"] == "admin"
    created = run(
        "tokens", "create", "--username", "cli.admin", "--tenant", "cli-tenant", "--name", "ops"
    )
    token = created["token"]
    assert token.startswith("tly_") and len(token) >= 4 + 43  # 256 bits, base64url

    engine = make_engine(services.database_url)
    try:
        with make_session_factory(engine)() as session:
            stored = session.scalars(select(Token).where(Token.id == created["id"])).one()
            assert token not in stored.token_hash  # only the hash is kept
            principal = authenticate(session, token)
            assert principal is not None and principal.tenant_id == "cli-tenant"

        listed = run("tokens", "list")
        assert any(t["id"] == created["id"] and t["revoked_at"] is None for t in listed)
        assert all("token" not in t for t in listed)

        run("tokens", "revoke", str(created["id"]))
        with make_session_factory(engine)() as session:
            assert authenticate(session, token) is None
    finally:
        engine.dispose()


def test_token_for_unknown_user_fails(services: Services) -> None:
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
    result = runner.invoke(cli, ["tokens", "create", "--username", "ghost"])
    assert result.exit_code != 0
    assert "no user 'ghost'" in result.output
