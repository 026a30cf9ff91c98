"""The client's history reads against a real stack: boards, own rank, balances as of a
moment, statement pages as an iterator, and the export as a stream (sync and async)."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy.orm import Session, sessionmaker
from tally_client import AsyncClient, Client, StatementPage

from shared.models import Role
from shared.models import User as UserRow
from tests.factories import Factory
from tests.stack import Stack

pytestmark = pytest.mark.processes


def test_the_reads_give_typed_results_and_pages_on_demand(
    stack: Stack, stack_factory: Factory
) -> None:
    admin = stack_factory.caller(Role.ADMIN)
    mario, luigi = stack_factory.user(), stack_factory.user()
    with Client(stack.base_url, admin.token) as tally:
        first = tally.points_adjust(mario.id, 50, reason="a", wait=10)
        for amount in (10, -5, 20):
            tally.points_adjust(mario.id, amount, reason="b", wait=10)
        tally.adjust(luigi.id, 7, comment="c", wait=10)
        tally.adjust(mario.id, 3, comment="d", wait=10)
        assert first.completed

        board = tally.leaderboard(period="day", ranking="rank")
        assert [(row.user_id, row.total_score, row.rank) for row in board.rows] == [
            (luigi.id, 7, 1), (mario.id, 3, 2),
        ]  # fmt: skip
        assert board.count == 2 and board.period.period == "day"
        mine = tally.own_rank(mario.id, period="week")
        assert (mine.place.rank, mine.place.total_score, mine.count) == (2, 3, 2)

        points = {s.points_type: s for s in tally.balances(mario.id)}["points"]
        assert points.balance == 75
        created = first.body["data"]["transaction"]["created_at"]
        then = {s.points_type: s for s in tally.balances(mario.id, as_of=created)}["points"]
        assert (then.balance, then.total_earned) == (50, 50)

        pages = tally.statement(mario.id, page_size=3)
        page = next(pages)
        assert isinstance(page, StatementPage)
        assert [e.amount for e in page.entries] == [50, 10, -5]
        assert page.closing.balance == 75 and page.totals == {"adjust": (75, 4)}
        assert [e.amount for e in next(pages).entries] == [20]
        assert next(pages, None) is None

        lines = b"".join(tally.export()).decode().splitlines()
        amounts = [json.loads(line)["amount"] for line in lines]
        assert sorted(amounts) == sorted([50, 10, -5, 20, 7, 3])

    async def read_async() -> tuple[int | None, list[int]]:
        async with AsyncClient(stack.base_url, admin.token) as tally:
            mine = await tally.own_rank(luigi.id, period="day")
            entries = [e.amount async for p in tally.statement(mario.id) for e in p.entries]
            blocks = [block async for block in tally.export(format="csv")]
            header = b"".join(blocks).decode().splitlines()[0]
            assert header.startswith("id,ulid,request_id")
            return mine.place.rank, entries

    assert asyncio.run(read_async()) == (1, [50, 10, -5, 20])


def test_tally_export_writes_the_rows_after_its_cursor_and_counts_them_on_stderr(
    stack: Stack, stack_factory: Factory
) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    admin = stack_factory.caller(Role.ADMIN)
    user = stack_factory.user()
    with Client(stack.base_url, admin.token) as tally:
        for amount in (4, 5, 6):
            tally.points_adjust(user.id, amount, reason="e", wait=10)
    runner = CliRunner()
    base = ["export", "--url", stack.base_url, "--token", admin.token]
    everything = runner.invoke(cli, [*base, "--format", "ndjson"])
    assert everything.exit_code == 0, everything.output
    rows = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [row["amount"] for row in rows] == [4, 5, 6]
    since = runner.invoke(cli, [*base, "--since", str(rows[0]["id"]), "--format", "csv",
                                "--progress"])  # fmt: skip
    assert since.exit_code == 0, since.output
    table = since.stdout.splitlines()
    assert table[0].startswith("id,") and len(table) == 3
    assert "2 rows in" in since.stderr
    refused = runner.invoke(cli, ["export", "--url", stack.base_url, "--token", "wrong"])
    assert refused.exit_code == 1 and "401" in refused.stderr  # the server refused


def test_every_read_of_the_api_is_a_call_with_a_typed_result_and_lists_are_lazy(
    stack: Stack, stack_factory: Factory
) -> None:
    """Issue 24: scores, transactions, holds, reputation types, freeze/unfreeze and batch
    items from the client, typed; a listing reads its pages only as it is iterated."""
    import httpx
    from tally_client import Hold, Score, Transaction

    admin = stack_factory.caller(Role.ADMIN)
    user = stack_factory.user()
    pages: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: pages.append(r.url.path)]})
    with http, Client(stack.base_url, admin.token, http=http) as tally:
        tally.points_adjust(user.id, 50, reason="earned", wait=10)
        held = tally.hold(user.id, 20, reason="order", wait=10)
        assert isinstance(held.hold, Hold) and held.hold.status == "open"
        assert held.transaction is not None and held.transaction.type == "hold"
        assert tally.get_hold(user.id, held.hold.id).amount == 20

        transactions = list(tally.transactions(user.id))
        assert all(isinstance(t, Transaction) for t in transactions)
        assert sorted((t.type, t.amount) for t in transactions) == [("adjust", 50), ("hold", 0)]
        tally.adjust(user.id, 3, comment="community", wait=10)
        (score,) = tally.scores(user_id=user.id)
        assert isinstance(score, Score) and (score.score, score.username) == (3, user.username)
        assert {kind.name for kind in tally.reputation_types()} >= {"manual"}

        assert tally.freeze(user.id, reason="audit").status == "frozen"
        assert tally.unfreeze(user.id).status == "active"

        items = [{"user_id": user.id, "score": 1, "comment": f"item {n}"} for n in range(1500)]
        batch = tally.follow_batch(tally.bulk(items, key=f"lazy-{user.id}"), timeout=120)
        pages.clear()
        listed = tally.batch_items(batch)
        assert pages == []  # nothing read until iterated
        first = next(iter(listed))
        assert first.status == "completed" and len(pages) == 1  # one page of 1,000
        assert sum(1 for _ in tally.batch_items(batch)) == 1500


def test_the_async_client_has_the_same_reads(stack: Stack, stack_factory: Factory) -> None:
    admin = stack_factory.caller(Role.ADMIN)
    user = stack_factory.user()

    async def read() -> tuple[list[int], list[int], str, str, int]:
        async with AsyncClient(stack.base_url, admin.token) as tally:
            await tally.points_adjust(user.id, 7, reason="earned", wait=10)
            await tally.adjust(user.id, 2, comment="community", wait=10)
            amounts = sorted([t.amount async for t in tally.transactions(user.id)])
            scores = [s.score async for s in tally.scores(user_id=user.id)]
            frozen = (await tally.freeze(user.id)).status
            active = (await tally.unfreeze(user.id)).status
            kinds = len(await tally.reputation_types())
            return amounts, scores, str(frozen), str(active), kinds

    amounts, scores, frozen, active, kinds = asyncio.run(read())
    assert (amounts, scores, frozen, active) == ([2, 7], [2], "frozen", "active") and kinds > 0


def test_users_are_created_read_and_listed_lazily_sync_and_async(
    stack: Stack, stack_factory: Factory, stack_sessions: sessionmaker[Session]
) -> None:
    """Issue 24: the client covers the users routes: a page at a time, a typed User."""
    import httpx
    from tally_client import Conflict, NotFound, User

    admin = stack_factory.caller(Role.ADMIN)
    pages: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: pages.append(str(r.url))]})
    with http, Client(stack.base_url, admin.token, http=http) as tally:
        luigi = tally.create_user(
            "luigi", external_id=f"usr_luigi_{admin.tenant_id}", real_name="Luigi Verdi",
            role="moderator",
        )  # fmt: skip
        assert isinstance(luigi, User)
        assert (luigi.username, luigi.real_name, luigi.role, luigi.reputation) == (
            "luigi", "Luigi Verdi", "moderator", 0,
        )  # fmt: skip
        with pytest.raises(Conflict):
            tally.create_user("luigi")
        before = tally.adjust(luigi.id, 5, comment="welcome", wait=10).body["reputed_at"]
        tally.adjust(luigi.id, 2, comment="again", wait=10)
        assert tally.get_user(luigi.id).reputation == 7
        then = tally.get_user(luigi.id, as_of=before)
        assert (then.reputation, then.as_of is not None) == (5, True)
        with pytest.raises(NotFound):
            tally.get_user(2**62)
        (page,) = tally.reputation_statement(luigi.id)
        assert [entry.amount for entry in page.entries] == [5, 2]

        with stack_sessions.begin() as session:  # more than a page, without 1,000 requests
            rows = [UserRow(tenant_id=admin.tenant_id, username=f"user_{n}") for n in range(1002)]
            session.add_all(rows)
            session.flush()
            made = [row.id for row in rows]
        pages.clear()
        listed = tally.users()
        assert pages == []  # nothing read until iterated
        assert next(iter(listed)).id == admin.user_id and len(pages) == 1  # one page of 1,000
        assert [user.id for user in tally.users()] == [admin.user_id, luigi.id, *made]
        (found,) = tally.users(external_id=luigi.external_id)
        assert found.id == luigi.id and found.reputation == 7

    async def read() -> tuple[list[int], str, int, int]:
        async with AsyncClient(stack.base_url, admin.token) as tally:
            peach = await tally.create_user("peach", email="peach@example.com")
            ids = [user.id async for user in tally.users()]
            read = await tally.get_user(peach.id)
            (page,) = [p async for p in tally.reputation_statement(luigi.id)]
            return ids, read.email, len(page.entries), peach.id

    ids, email, entries, peach_id = asyncio.run(read())
    assert ids == [admin.user_id, luigi.id, *made, peach_id]
    assert (email, entries) == ("peach@example.com", 2)
