"""`tally accounts freeze|unfreeze`: requests to a frozen account are rejected and stay so."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from cli.main import cli
from shared.intake.adjustments import Adjustment
from shared.models import Account, AdjustmentRequest, AdjustmentStatus
from tests.conftest import Services
from tests.factories import Factory, apply_now, queue_adjustments
from worker.app import make_celery


def test_freeze_rejects_until_unfrozen_and_replays_nothing(services: Services, base_settings):  # type: ignore[no-untyped-def]
    app = make_celery(base_settings)
    sessions = app.resources.sessions
    try:
        factory = Factory(sessions)
        caller = factory.caller()
        user = factory.user()
        runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})

        def tally(*args: str) -> dict:
            result = runner.invoke(
                cli, [*args, "--username", user.username, "--tenant", factory.tenant_id, "--json"]
            )
            assert result.exit_code == 0, result.output
            (account,) = json.loads(result.output)["accounts"]
            return account

        # Nothing to freeze yet: said so, and no account is made for it (issue 20).
        none = runner.invoke(cli, ["accounts", "freeze", "--username", user.username,
                                   "--tenant", factory.tenant_id])  # fmt: skip
        assert none.exit_code == 1 and "has no account: nothing to freeze" in none.output
        with sessions() as session:
            assert not session.scalars(select(Account).where(Account.user_id == user.id)).all()

        def post(amount: int) -> int:
            adjustment = Adjustment(user_id=user.id, points_type="points", amount=amount)
            (account_id,) = queue_adjustments(sessions, caller, [adjustment])
            apply_now(app, [account_id])
            with sessions() as session:
                return (
                    session.scalars(
                        select(AdjustmentRequest.id)
                        .where(AdjustmentRequest.account_id == account_id)
                        .order_by(AdjustmentRequest.id.desc())
                    ).first()
                    or 0
                )

        post(1)
        frozen = tally("accounts", "freeze")
        assert frozen["status"] == "frozen" and frozen["points_type"] == "points"
        assert tally("accounts", "freeze")["status"] == "frozen"  # idempotent
        rejected = post(10)
        unfrozen = tally("accounts", "unfreeze")
        assert unfrozen["status"] == "active" and unfrozen["balance"] == 1
        applied = post(7)
        with sessions() as session:
            first = session.get_one(AdjustmentRequest, rejected)
            second = session.get_one(AdjustmentRequest, applied)
            assert (first.status, first.error_code) == (AdjustmentStatus.REJECTED, "account_frozen")
            assert second.status == AdjustmentStatus.COMPLETED
        assert tally("accounts", "unfreeze")["balance"] == 8
    finally:
        app.resources.close()


def test_freeze_names_an_unknown_user_or_points_type(services: Services) -> None:
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
    missing = runner.invoke(cli, ["accounts", "freeze", "--username", "nobody-at-all"])
    assert missing.exit_code == 1 and "no user 'nobody-at-all'" in missing.output
    unknown = runner.invoke(cli, ["accounts", "freeze", "--username", "x", "--points-type", "nope"])
    assert unknown.exit_code == 2 and "unknown points type" in unknown.output


def test_freeze_without_a_type_freezes_every_account_of_the_user(
    services: Services, base_settings
) -> None:  # type: ignore[no-untyped-def]
    app = make_celery(base_settings)
    sessions = app.resources.sessions
    try:
        factory = Factory(sessions)
        caller, user = factory.caller(), factory.user()
        queue_adjustments(sessions, caller, [
            Adjustment(user_id=user.id, points_type=kind, amount=5)
            for kind in ("points", "reputation")
        ])  # fmt: skip
        runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
        who = ["--username", user.username, "--tenant", factory.tenant_id]

        frozen = runner.invoke(cli, ["accounts", "freeze", *who, "--json"])
        assert frozen.exit_code == 0, frozen.output
        accounts = json.loads(frozen.output)["accounts"]
        assert [(a["points_type"], a["status"]) for a in accounts] == [
            ("points", "frozen"), ("reputation", "frozen"),
        ]  # fmt: skip
        only = runner.invoke(cli, ["accounts", "unfreeze", *who, "--points-type", "reputation"])
        assert only.exit_code == 0 and "reputation account" in only.output
        with sessions() as session:
            statuses = dict(session.execute(
                select(Account.points_type, Account.status).where(Account.user_id == user.id)
            ).all())  # fmt: skip
        assert statuses == {"points": "frozen", "reputation": "active"}
    finally:
        app.resources.close()
