"""tally_client.AsyncClient against a real stack: the same calls, awaited."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.orm import Session, sessionmaker
from tally_client import AsyncClient, BatchStatus, KeyReused, Rejected

from shared.models import Role
from tests.factories import Factory, count_rows
from tests.stack import Stack

pytestmark = pytest.mark.processes


def test_async_client_adjusts_waits_and_follows_a_batch(
    stack: Stack, stack_factory: Factory, stack_sessions: sessionmaker[Session]
) -> None:
    caller = stack_factory.caller(Role.ADMIN)
    users = [stack_factory.user() for _ in range(3)]

    async def scenario() -> None:
        async with AsyncClient(stack.base_url, caller.token) as tally:
            applied = await tally.adjust(users[0].username, 7, comment="async", wait=30)
            assert applied.completed and applied.body["user"]["reputation"] == 7

            queued = await tally.adjust(users[1].id, 3, comment="later", wait=0)
            assert queued.status == "queued"
            final = await tally.wait(queued, timeout=30)
            assert final.status == "completed" and final.score is not None
            assert (await tally.status(idempotency_key=queued.idempotency_key)).id == final.id

            with pytest.raises(KeyReused):
                await tally.adjust(users[1].id, 4, comment="later",
                                   idempotency_key=queued.idempotency_key)  # fmt: skip
            with pytest.raises(Rejected) as refused:
                await tally.points_adjust(users[2].id, -1, reason="nothing to spend")
            assert refused.value.reason == "insufficient_balance"

            batch = await tally.bulk(
                [{"user_id": u.id, "score": 2} for u in users], key="async-batch", comment="bulk"
            )
            progress: list[BatchStatus] = []
            done = await tally.follow_batch(batch, poll=0.2, on_progress=progress.append)
            assert done.status == "completed" and done.counts["completed"] == 3
            assert progress[-1].final
            assert [item async for item in tally.batch_items(done, status="rejected")] == []
            replay = await tally.bulk(
                [{"user_id": u.id, "score": 2} for u in users], key="async-batch", comment="bulk"
            )
            assert replay.replayed and replay.id == batch.id

    asyncio.run(scenario())
    with stack_sessions() as session:
        # 2 singles, 1 rejected points request, 3 batch items; 5 ledger entries.
        assert count_rows(session, stack_factory.tenant_id) == (6, 5)
