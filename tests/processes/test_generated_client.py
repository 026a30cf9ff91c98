"""Issue 24: the OpenAPI document generates a working client. openapi-python-client generates
one from a running stack's /openapi.json (with no warning), and it calls five routes with
typed bodies and answers."""

from __future__ import annotations

import importlib
import secrets
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import requests

from shared.models import Role
from tests.factories import Factory
from tests.stack import Stack

pytestmark = pytest.mark.processes

# The generator skips a body of a media type it does not know: NDJSON (bulk's streaming
# body) is read as the octet stream it is on the wire. Formatting the code is not needed.
CONFIG = """\
post_hooks: []
content_type_overrides:
  application/x-ndjson: application/octet-stream
"""


def _generate(base_url: str, folder: Path) -> ModuleType:
    document = folder / "openapi.json"
    document.write_bytes(requests.get(base_url + "/openapi.json", timeout=10).content)
    config = folder / "config.yaml"
    config.write_text(CONFIG)
    package = "tally_generated_" + secrets.token_hex(3)
    generator = Path(sys.executable).parent / "openapi-python-client"
    result = subprocess.run(
        [str(generator), "generate", "--path", str(document), "--config", str(config),
         "--meta", "none", "--output-path", str(folder / package)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output  # every operation and model generated
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(package)
    finally:
        sys.path.remove(str(folder))


def test_a_generated_client_calls_five_routes(
    stack: Stack, stack_factory: Factory, tmp_path: Path
) -> None:
    generated = _generate(stack.base_url, tmp_path)
    name = generated.__name__

    def module(path: str) -> ModuleType:
        return importlib.import_module(f"{name}.{path}")

    models = module("models")
    admin = stack_factory.caller(Role.ADMIN)
    user = stack_factory.user()
    client = generated.AuthenticatedClient(base_url=stack.base_url, token=admin.token)

    # 1. An adjustment, applied (201): a typed Score, and the status URL in Location.
    created = module("api.score.create_score").sync_detailed(
        client=client,
        body=models.ScoreInput(username=user.username, score=7, comment="generated"),
        idempotency_key="generated-" + secrets.token_hex(4),
        prefer="wait=30",
    )
    assert created.status_code == 201, created.content
    assert isinstance(created.parsed, models.Score) and created.parsed.score == 7
    request_id = int(created.headers["Location"].rstrip("/").rsplit("/", 1)[-1])

    # 2. Its status.
    status = module("api.score.get_request_status").sync(client=client, request_id=request_id)
    assert isinstance(status, models.RequestStatus) and status.status == "completed"

    # 3. The user's entries.
    page = module("api.score.list_scores").sync(client=client, username=user.username)
    assert isinstance(page, models.ScorePage) and page.count == 1

    # 4. A points adjustment, in the points API's envelope.
    adjusted = module("api.points.adjust_points").sync(
        user_ref=str(user.id),
        client=client,
        body=models.AdjustPointsInput(amount=5, reason="generated"),
        prefer="wait=30",
    )
    assert isinstance(adjusted, models.PointOperationResponse)
    assert adjusted.data.account.balance == 5

    # 5. The balances it left.
    balances = module("api.points.get_points_balances").sync(user_ref=str(user.id), client=client)
    assert isinstance(balances, models.PointAccountsResponse)
    figures = sorted((a.points_type, a.balance) for a in balances.data)
    assert figures == [("points", 5), ("reputation", 7)]
    client.get_httpx_client().close()
