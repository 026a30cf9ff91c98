"""`tally reconcile` passes on a healthy ledger and reports a corrupted balance."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import text

from cli.main import cli
from shared.models import Role
from shared.processing import drain_accounts
from shared.resources import Resources
from tests.conftest import Services
from tests.factories import Factory, queue_requests


def _reconcile(services: Services) -> tuple[int, dict]:
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
    result = runner.invoke(cli, ["reconcile", "--json"])
    return result.exit_code, json.loads(result.output)


def test_reconcile_passes_then_reports_a_corrupted_balance(services: Services, base_settings):
    resources = Resources(base_settings)
    try:
        factory = Factory(resources.sessions)
        caller = factory.caller(Role.MODERATOR)
        user = factory.user()
        account_id, _ = queue_requests(resources.sessions, caller, user.id, [5, 7, -3])
        drain_accounts(
            [account_id],
            redis=resources.redis,
            channel="tally:done:tests",
            sessions=resources.sessions,
            lock_ttl=5,
            lock_wait=5,
            chunk=100,
        )

        code, report = _reconcile(services)
        assert code == 0, report
        assert report["violations"] == []
        assert report["entries"] >= 3

        with resources.sessions.begin() as session:
            session.execute(
                text("UPDATE accounts SET balance = balance + 1 WHERE id = :id"),
                {"id": account_id},
            )
        code, report = _reconcile(services)
        assert code == 1
        assert [v["subject"] for v in report["violations"]] == [f"account {account_id}"]
        assert report["violations"][0]["invariant"] == 1
        assert "balance 10 vs ledger 9" in report["violations"][0]["detail"]
    finally:
        with resources.sessions.begin() as session:  # mend it for the tests that follow
            session.execute(
                text("UPDATE accounts SET balance = balance - 1 WHERE id = :id"),
                {"id": account_id},
            )
        resources.close()
