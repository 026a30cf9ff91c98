"""`tally reconcile` passes on a healthy ledger and reports a corrupted balance."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import text

from cli.main import cli
from shared.models import Batch, Role, new_ulid
from shared.processing import drain_accounts
from shared.resources import Resources
from tests.conftest import Services
from tests.factories import Factory, queue_requests


def _reconcile(services: Services) -> tuple[int, dict]:
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
    result = runner.invoke(cli, ["reconcile", "--json"])
    return result.exit_code, json.loads(result.output)


def apply_now_with(resources: Resources, account_id: str) -> None:
    drain_accounts(
        [account_id],
        redis=resources.redis,
        channel="tally:done:tests",
        sessions=resources.sessions,
        lock_ttl=5,
        lock_wait=5,
        chunk=100,
    )


def test_reconcile_passes_then_reports_a_corrupted_balance(services: Services, base_settings):
    resources = Resources(base_settings)
    try:
        factory = Factory(resources.sessions)
        caller = factory.caller(Role.MODERATOR)
        user = factory.user()
        account_id, _ = queue_requests(resources.sessions, caller, user.id, [5, 7, -3])
        apply_now_with(resources, account_id)

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


def test_reconcile_reports_a_batch_whose_counts_disagree_with_its_items(
    services: Services, base_settings
) -> None:
    resources = Resources(base_settings)
    batch_id = new_ulid()
    try:
        caller = Factory(resources.sessions).caller(Role.MODERATOR)
        with resources.sessions.begin() as session:
            session.add(
                Batch(id=batch_id, tenant_id=caller.tenant_id, idempotency_key=batch_id,
                      fingerprint="x", total=1, created_by=caller.user_id)
            )  # fmt: skip
        code, report = _reconcile(services)
        assert code == 0, report

        with resources.sessions.begin() as session:
            session.execute(
                text("UPDATE batches SET completed = 1 WHERE id = :id"), {"id": batch_id}
            )
        code, report = _reconcile(services)
        assert code == 1
        assert [v["subject"] for v in report["violations"]] == [f"batch {batch_id}"]
        assert "completed 1 vs requests 0" in report["violations"][0]["detail"]
    finally:
        with resources.sessions.begin() as session:
            session.execute(text("DELETE FROM batches WHERE id = :id"), {"id": batch_id})
        resources.close()


def test_reconcile_reports_an_entry_that_disagrees_with_its_request(
    services: Services, base_settings
) -> None:
    resources = Resources(base_settings)
    try:
        factory = Factory(resources.sessions)
        caller, other = factory.caller(Role.MODERATOR), factory.caller(Role.MODERATOR)
        user = factory.user()
        account_id, (request_id,) = queue_requests(resources.sessions, caller, user.id, [4])
        apply_now_with(resources, account_id)
        code, report = _reconcile(services)
        assert code == 0, report

        with resources.sessions.begin() as session:
            session.execute(
                text("UPDATE adjustment_requests SET created_by = :other WHERE id = :id"),
                {"other": other.user_id, "id": request_id},
            )
        code, report = _reconcile(services)
        assert code == 1
        (violation,) = report["violations"]
        assert violation["invariant"] == 2
        assert f"request {request_id}" in violation["detail"]
    finally:
        with resources.sessions.begin() as session:
            session.execute(
                text("UPDATE adjustment_requests SET created_by = :me WHERE id = :id"),
                {"me": caller.user_id, "id": request_id},
            )
        resources.close()
