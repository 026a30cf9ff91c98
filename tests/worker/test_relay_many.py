"""The relay with more stale accounts than one drain takes at once, or one notify sends.

More than ACCOUNTS_PER_TASK accounts (a drain task's take) and NOTIFY_ACCOUNTS_PER_CALL
(one Lua call's share of a notify) lose their dispatch; the relay finds every one and
the workers apply them all.
"""

from __future__ import annotations

import time

from celery import Task
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.flow.dispatch import ACCOUNTS_PER_TASK, NOTIFY_ACCOUNTS_PER_CALL
from shared.intake.adjustments import Adjustment
from shared.models import AdjustmentRequest
from shared.platform.db import transaction
from tests.factories import Caller, Factory, queue_adjustments
from worker.app import TallyCelery

ACCOUNTS = max(ACCOUNTS_PER_TASK, NOTIFY_ACCOUNTS_PER_CALL) + 100


def test_the_relay_hands_over_more_accounts_than_one_task_takes(
    celery_app: TallyCelery,
    relay_outbox: Task,
    factory: Factory,
    moderator: Caller,
    sessions: sessionmaker[Session],
    worker: None,
) -> None:
    with transaction(sessions) as session:
        users = session.scalars(
            text(
                "INSERT INTO users (tenant_id, username, real_name, email, avatar, description,"
                " role) SELECT :tenant, 'many_' || n, '', '', '', '', 'user'"
                " FROM generate_series(1, :count) AS n RETURNING id"
            ),
            {"tenant": factory.tenant_id, "count": ACCOUNTS},
        ).all()
    adjustments = [Adjustment(user, "reputation", 1, comment="relayed") for user in users]
    # Recorded as the API records them, and never dispatched: every notify was lost.
    accounts = queue_adjustments(sessions, moderator, adjustments)
    assert len(accounts) == ACCOUNTS
    with transaction(sessions) as session:
        session.execute(
            text(
                "UPDATE adjustment_requests SET created_at = now() - interval '1 minute'"
                " WHERE tenant_id = :tenant"
            ),
            {"tenant": factory.tenant_id},
        )
    assert relay_outbox() >= ACCOUNTS

    def statuses() -> dict[str, int]:
        with sessions() as session:
            rows = session.execute(
                select(AdjustmentRequest.status, func.count())
                .where(AdjustmentRequest.tenant_id == factory.tenant_id)
                .group_by(AdjustmentRequest.status)
            )
            return {status: count for status, count in rows}

    deadline = time.monotonic() + 60
    while statuses() != {"completed": ACCOUNTS} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert statuses() == {"completed": ACCOUNTS}
