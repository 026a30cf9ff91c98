"""The `tally` command: users and tokens against the test database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from cli.main import cli
from cli.run import demo_token
from shared.intake.auth import authenticate, hash_token, record_use
from shared.models import Token
from shared.platform.db import make_engine, make_session_factory
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

    engine = services.engine()
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


def test_a_token_may_expire_and_the_list_shows_its_state_and_last_use(
    run, services: Services
) -> None:  # type: ignore[no-untyped-def]
    run("users", "create", "--username", "cli.expiring", "--role", "moderator")
    created = run("tokens", "create", "--username", "cli.expiring", "--expires-in", "30d")
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)
    engine = services.engine()
    try:
        with make_session_factory(engine).begin() as session:
            record_use(session, created["id"])
            session.execute(
                update(Token).where(Token.id == created["id"]).values(expires_at=func.now())
            )
            assert authenticate(session, created["token"]) is None
    finally:
        engine.dispose()
    (listed,) = [t for t in run("tokens", "list") if t["id"] == created["id"]]
    assert listed["state"] == "expired" and listed["last_used_at"] is not None


@pytest.mark.parametrize("bad", ["30", "d", "0d", "1y", "-1d"])
def test_a_malformed_expiry_is_refused(services: Services, bad: str) -> None:
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
    result = runner.invoke(cli, ["tokens", "create", "--username", "x", "--expires-in", bad])
    assert result.exit_code == 2 and "--expires-in" in result.output


def _demo_tokens(database_url: str) -> dict[str, Token]:
    """The tokens named `demo`, by hash."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            demo = session.scalars(select(Token).where(Token.name == "demo")).all()
            return {token.token_hash: token for token in demo}
    finally:
        engine.dispose()


def test_tally_run_keeps_itsdemo_token_across_starts(services: Services, tmp_path) -> None:  # type: ignore[no-untyped-def]
    saved = tmp_path / "demo-token"
    first = demo_token(services.database_url, saved)
    assert saved.stat().st_mode & 0o777 == 0o600
    made = _demo_tokens(services.database_url)
    assert demo_token(services.database_url, saved) == first
    assert _demo_tokens(services.database_url).keys() == made.keys()
    saved.unlink()  # a fresh data folder gets a token of its own
    assert demo_token(services.database_url, saved) != first


def test_the_demo_token_expires_in_30_days_and_an_expired_one_is_replaced(
    services: Services, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    saved = tmp_path / "demo-token"
    first = demo_token(services.database_url, saved)
    expires_at = _demo_tokens(services.database_url)[hash_token(first)].expires_at
    assert expires_at is not None
    assert timedelta(days=29, hours=23) < expires_at - datetime.now(UTC) <= timedelta(days=30)
    engine = services.engine()
    try:
        with make_session_factory(engine).begin() as session:
            session.execute(
                update(Token)
                .where(Token.token_hash == hash_token(first))
                .values(expires_at=func.now())
            )
    finally:
        engine.dispose()
    second = demo_token(services.database_url, saved)
    assert second != first and saved.read_text().strip() == second


def test_the_demo_token_file_is_made_private_even_if_it_was_not(
    services: Services, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    saved = tmp_path / "demo-token"
    saved.write_text("tly_an-old-token-the-database-never-saw\n")
    saved.chmod(0o644)
    token = demo_token(services.database_url, saved)
    assert saved.stat().st_mode & 0o777 == 0o600
    assert saved.read_text() == token + "\n"


def test_the_demo_user_has_the_external_id_the_readme_uses_even_in_an_older_folder(
    services: Services, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from shared.models import DEFAULT_TENANT, User

    engine = services.engine()
    try:
        demo_token(services.database_url, tmp_path / "demo-token")
        mario = (User.tenant_id == DEFAULT_TENANT) & (User.username == "mario.rossi")
        with make_session_factory(engine).begin() as session:
            assert session.scalars(select(User.external_id).where(mario)).one() == "usr_42"
            session.execute(update(User).where(mario).values(external_id=None))
        (tmp_path / "demo-token").unlink()  # as a folder from before would have it
        demo_token(services.database_url, tmp_path / "demo-token")
        with make_session_factory(engine)() as session:
            assert session.scalars(select(User.external_id).where(mario)).one() == "usr_42"
    finally:
        engine.dispose()
