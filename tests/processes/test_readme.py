"""Issue 24: every curl and Python block of the README runs against a real stack, so that an
example cannot go stale again.

The blocks are read from README.md as written. A ```sh block that calls curl runs in
bash with `set -e -o pipefail`, the stack's address for http://127.0.0.1:8000, `$TOKEN`
an admin's token, and every curl made to fail on an HTTP error (`--fail-with-body`). A
```python block runs with `token`, and with what its comments stand for: the events
block gets a webhook request signed as tally signs one, and a cursor store whose second
save ends the (never-ending) feed. `make run`'s demo user is made first: mario.rossi,
external id usr_42.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from standardwebhooks import Webhook
from tally_client import Client

from shared.events.webhooks import new_secret
from shared.models import Role
from tests.factories import Factory
from tests.stack import Stack

pytestmark = pytest.mark.processes

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
DEMO_URL = "http://127.0.0.1:8000"


def blocks(language: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README.read_text()) if kind == language]


def test_the_readme_has_the_examples_this_test_runs() -> None:
    shell = [block for block in blocks("sh") if "curl " in block]
    assert len(shell) >= 2 and len(blocks("python")) >= 2
    assert all(DEMO_URL in block for block in shell)


@pytest.fixture
def demo(stack: Stack, stack_factory: Factory) -> str:
    """The demo's users in the test's tenant; an admin's token."""
    stack_factory.user("mario.rossi", real_name="Mario Rossi", external_id="usr_42")
    return stack_factory.caller(Role.ADMIN).token


@pytest.mark.parametrize("index", range(len([b for b in blocks("sh") if "curl " in b])))
def test_a_curl_block_runs(stack: Stack, demo: str, index: int) -> None:
    block = [b for b in blocks("sh") if "curl " in b][index]
    script = block.replace(DEMO_URL, stack.base_url).replace("curl ", "curl -sS --fail-with-body ")
    result = subprocess.run(
        ["bash", "-c", "set -e -o pipefail\n" + script],
        env=os.environ | {"TOKEN": demo},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"


class _Caught(Exception):
    """The events block's feed, stopped once it handed out an event."""


def test_the_python_blocks_run(stack: Stack, demo: str) -> None:
    first, *rest = blocks("python")
    namespace: dict[str, Any] = {"token": demo}
    exec(compile(first.replace(DEMO_URL, stack.base_url), "README.md", "exec"), namespace)
    with Client(stack.base_url, demo) as tally:
        balances = tally.balances("usr_42")
    assert [(s.points_type, s.balance) for s in balances] == [("points", 80), ("reputation", 18)]
    (events,) = [block for block in rest if "verify_webhook" in block]

    secret, moment = new_secret(), datetime.now(UTC)
    body = json.dumps({"id": 1, "type": "entry.created", "data": {}})
    headers = {"webhook-id": "1", "webhook-timestamp": str(int(moment.timestamp())),
               "webhook-signature": Webhook(secret).sign("1", moment, body)}  # fmt: skip
    handled: list[Any] = []
    saved: list[int] = []

    def save_cursor(cursor: int) -> None:
        saved.append(cursor)
        if len(saved) == 2:
            raise _Caught

    with Client(stack.base_url, demo) as tally:
        namespace = {
            "request": SimpleNamespace(get_data=body.encode, headers=headers),
            "SECRET": secret,
            "seen": lambda event_id: False,
            "handle": handled.append,
            "load_cursor": lambda: 0,
            "save_cursor": save_cursor,
            "tally": tally,
        }
        with pytest.raises(_Caught):
            exec(compile(events, "README.md", "exec"), namespace)
    assert handled[0]["type"] == "entry.created"  # the verified webhook
    assert len(handled) == 3 and saved == sorted(saved)  # and two events of the feed
