"""`tally tokens revoke` over HTTP: the token is refused with a 401 within the cache time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from click.testing import CliRunner
from flask import Flask

from cli.main import cli
from shared.models import Role
from shared.platform.config import Settings
from tests.factories import Factory

URL = "/api/v2/score/reputation_types/"
CACHE_SECONDS = 0.5


def test_a_token_revoked_with_the_cli_is_refused_within_the_cache_time(
    app_with: Callable[..., Flask], factory: Factory, base_settings: Settings
) -> None:
    client = app_with(token_cache_seconds=CACHE_SECONDS).test_client()
    user = factory.user(role=Role.MODERATOR)
    runner = CliRunner(env={"TALLY_DATABASE_URL": base_settings.database_url})

    def tally(*args: str) -> dict:
        result = runner.invoke(cli, [*args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def bearer(created: dict) -> dict[str, str]:
        return {"Authorization": f"Bearer {created['token']}"}

    tenant = ["--username", user.username, "--tenant", factory.tenant_id]
    revoked, kept = tally("tokens", "create", *tenant), tally("tokens", "create", *tenant)
    assert client.get(URL, headers=bearer(revoked)).status_code == 200  # cached from here on
    assert client.get(URL, headers=bearer(kept)).status_code == 200

    assert tally("tokens", "revoke", str(revoked["id"])) == {"id": revoked["id"], "revoked": True}
    revoked_at = time.monotonic()
    # Refused within the cache time (until then the cached principal may still answer).
    while (response := client.get(URL, headers=bearer(revoked))).status_code == 200:
        assert time.monotonic() - revoked_at < CACHE_SECONDS + 0.5, "still accepted"
        time.sleep(0.05)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    # And from then on; the user's other token is untouched.
    assert client.get(URL, headers=bearer(revoked)).status_code == 401
    assert client.get(URL, headers=bearer(kept)).status_code == 200
