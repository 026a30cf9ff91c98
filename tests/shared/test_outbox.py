"""shared.flow.outbox.stale_accounts: which accounts the relay hands over again, and in which lane.

One transaction per test, rolled back (`scratch_session`); other tests' pending rows may
be in the suite's database, so only this test's accounts are looked at.
"""

from __future__ import annotations

import secrets

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.flow.dispatch import Lane
from shared.flow.outbox import stale_accounts
from shared.intake.adjustments import Adjustment, submit
from shared.intake.auth import Principal
from shared.intake.bulk import Award, Validated, store_batch
from shared.intake.users import create_user, ensure_tenant
from shared.intake.validation import UserInput, UserRef
from shared.models import Role
from shared.platform.config import DEFAULT_POINTS_TYPES

REPUTATION = DEFAULT_POINTS_TYPES["reputation"]


def test_stale_accounts_by_lane(scratch_session: Session) -> None:
    session = scratch_session
    tenant = "t_" + secrets.token_hex(6)
    ensure_tenant(session, tenant)
    users = {name: create_user(session, tenant, UserInput(username=name)).id
             for name in ("mod", "single", "bulk", "both", "done", "fresh")}  # fmt: skip
    caller = Principal(users["mod"], tenant, "mod", "", Role.MODERATOR)

    def single(name: str) -> str:
        adjustment = Adjustment(None, "reputation", 1, comment=name)
        target = UserRef("user_id", user_id=users[name])
        return submit(session.connection(), caller, target, adjustment, REPUTATION, None).account_id

    accounts = {name: single(name) for name in ("single", "both", "done")}
    items = {0: users["bulk"], 1: users["both"]}
    validated = Validated([Award(n, user, None, 1, "c", "") for n, user in items.items()], items)
    store_batch(session, caller, "batch-" + tenant, validated, REPUTATION)
    session.execute(
        text("UPDATE adjustment_requests SET status = 'completed' WHERE account_id = :a"),
        {"a": accounts["done"]},
    )
    # Everything so far was accepted an hour ago; one more request is accepted now.
    session.execute(
        text(
            "UPDATE adjustment_requests SET created_at = now() - interval '1 hour'"
            " WHERE tenant_id = :t"
        ),
        {"t": tenant},
    )
    accounts["fresh"] = single("fresh")
    accounts["bulk"] = session.execute(
        text("SELECT account_id FROM adjustment_requests WHERE user_id = :u"),
        {"u": users["bulk"]},
    ).scalar_one()

    def lanes(older_than: float) -> dict[str, Lane]:
        found = stale_accounts(session, older_than)
        return {
            name: lane
            for lane, ids in found.items()
            for name, account in accounts.items()
            if account in ids
        }

    # A single adjustment puts its account in the interactive lane, batch items alone in
    # the bulk lane; completed requests and those newer than the delay are not stale.
    assert lanes(60) == {"single": Lane.INTERACTIVE, "both": Lane.INTERACTIVE, "bulk": Lane.BULK}
    assert lanes(2 * 3600) == {}
