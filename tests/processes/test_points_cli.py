"""`tally points adjust|balance|hold|capture|release|reverse` against a running stack."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from tally_client import Client

from cli.main import cli
from shared.models import Role
from tests.factories import Factory
from tests.stack import Stack

pytestmark = pytest.mark.processes


def test_points_commands_hold_capture_release_and_reverse(
    stack: Stack, stack_factory: Factory
) -> None:
    admin = stack_factory.caller(Role.ADMIN)
    user = stack_factory.user(external_id="ext-" + secrets.token_hex(4))
    runner = CliRunner(env={"TALLY_TOKEN": admin.token, "TALLY_URL": stack.base_url})

    def tally(*args: str, exit_code: int = 0) -> dict:
        result = runner.invoke(cli, ["points", *args, "--json"])
        assert result.exit_code == exit_code, result.output
        return json.loads(result.output) if exit_code == 0 else {"output": result.output}

    with Client(stack.base_url, admin.token) as api:
        earned = api.points_adjust(user.id, 50, wait=30).body["data"]["transaction"]["id"]

    held = tally("hold", str(user.id), "20", "--reason", "order 7", "--key", "order-7")
    assert held["hold"]["status"] == "open" and held["account"]["frozen_balance"] == 20
    assert tally("hold", str(user.id), "20", "--reason", "order 7", "--key", "order-7") == held
    hold_id = str(held["hold"]["id"])
    refused = tally("hold", str(user.id), "31", exit_code=1)
    assert "insufficient_balance" in refused["output"]

    captured = tally("capture", str(user.id), hold_id, "--amount", "5")
    assert captured["transaction"]["amount"] == -5 and captured["account"]["balance"] == 45
    assert "hold_not_open" in tally("release", str(user.id), hold_id, exit_code=1)["output"]
    second = tally("hold", user.external_id or "", "10")
    assert tally("release", str(user.id), str(second["hold"]["id"]))["hold"]["status"] == (
        "released"
    )

    assert tally("reverse", earned, exit_code=1)  # 50 would take the balance of 45 below zero
    reversal = tally("reverse", earned, "--force", "--reason", "fraud")["transaction"]
    assert (reversal["type"], reversal["amount"], reversal["related_id"]) == (
        "reversal", -50, earned,
    )  # fmt: skip
    assert tally("reverse", "01ZZZZZZZZZZZZZZZZZZZZZZZZ", exit_code=1)  # not found


def test_a_one_off_correction_and_the_balance_need_no_curl(
    stack: Stack, stack_factory: Factory
) -> None:
    """Issue 24: `tally points adjust` (either sign) and `tally points balance`, now and as
    of a moment."""
    admin = stack_factory.caller(Role.ADMIN)
    user = stack_factory.user()
    runner = CliRunner(env={"TALLY_TOKEN": admin.token, "TALLY_URL": stack.base_url})

    def tally(*args: str) -> dict:
        result = runner.invoke(cli, ["points", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    added = tally("adjust", "--json", "--reason", "missed award", str(user.id), "8")
    assert (added["transaction"]["amount"], added["account"]["balance"]) == (8, 8)
    before_correction = datetime.now(UTC)
    taken = tally("adjust", "--json", "--reason", "typo", str(user.id), "--", "-3")
    assert (taken["transaction"]["amount"], taken["account"]["balance"]) == (-3, 5)

    balances = tally("balance", "--json", str(user.id))["balances"]
    assert [(b["points_type"], b["balance"]) for b in balances] == [("points", 5)]
    moment = before_correction.strftime("%Y-%m-%dT%H:%M:%S.%f")
    then = tally("balance", "--json", "--as-of", moment, str(user.id))["balances"]
    assert [(b["points_type"], b["balance"]) for b in then] == [("points", 8)]

    text = runner.invoke(cli, ["points", "balance", str(user.id)])
    assert text.exit_code == 0 and "points: balance 5, frozen 0" in text.output
    frozen_out = runner.invoke(cli, ["points", "adjust", str(user.id), "--", "-100"])
    assert frozen_out.exit_code == 1 and "insufficient_balance" in frozen_out.output
