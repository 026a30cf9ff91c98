"""Client.events and AsyncClient.events against a real stack (beat's pump numbers and
announces): the feed from the start, resumed from a saved cursor, long-polled, filtered."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from tally_client import AsyncClient, Client, Event, EventFeed, ValidationError

from shared.models import Role
from tests.factories import Factory
from tests.stack import Stack

pytestmark = pytest.mark.processes

APPLIED = ["request.accepted", "entry.created", "request.applied"]


def first_events(feed: EventFeed, count: int, timeout: float = 60.0) -> list[Event]:
    """The first `count` events of a followed feed (fewer if they do not come in `timeout`)."""
    taken: list[Event] = []

    def follow() -> None:
        for event in feed:
            taken.append(event)
            if len(taken) == count:
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    thread.join(timeout)
    feed.stop()
    return taken


def test_the_feed_resumes_from_a_saved_cursor_and_wakes_on_the_next_change(
    stack: Stack, stack_factory: Factory
) -> None:
    caller = stack_factory.caller(Role.MODERATOR)
    user = stack_factory.user()
    with Client(stack.base_url, caller.token) as tally:
        assert tally.adjust(user.username, 10, comment="first", wait=30).completed
        feed = tally.events(wait=5)
        seen = first_events(feed, 3)
        assert [event.type for event in seen] == APPLIED
        assert all(event.tenant_id == caller.tenant_id for event in seen)
        assert seen[1].data["amount"] == 10 and seen[1].account_seq == 2
        cursor = feed.cursor
        assert cursor == seen[-1].id

        # Caught up: a feed that is not followed ends at once.
        assert list(tally.events(after=cursor, follow=False)) == []

        # Resumed from the saved cursor, it waits for the next change, and only that.
        resumed = tally.events(after=cursor, types=["entry.created"], wait=20)
        taken: list[Event] = []
        follower = threading.Thread(target=lambda: taken.extend(first_events(resumed, 1)))
        follower.start()
        time.sleep(0.5)
        assert tally.adjust(user.username, -4, comment="second", wait=30).completed
        follower.join(60)
        (event,) = taken
        assert event.type == "entry.created" and event.data["amount"] == -4
        assert event.id > cursor and resumed.cursor == event.id

        everything = list(tally.events(follow=False, limit=2))
        assert [e.type for e in everything] == APPLIED * 2
        assert [e.id for e in everything[:3]] == [e.id for e in seen]

        with pytest.raises(ValidationError):
            list(tally.events(types=["no.such.type"], follow=False))


def test_the_async_feed_reads_the_same_events(stack: Stack, stack_factory: Factory) -> None:
    caller = stack_factory.caller(Role.ADMIN)
    user = stack_factory.user()

    async def scenario() -> None:
        async with AsyncClient(stack.base_url, caller.token) as tally:
            assert (await tally.adjust(user.id, 3, comment="async", wait=30)).completed
            feed = tally.events(types=["entry.created", "request.applied"], wait=5)
            seen: list[Event] = []
            async with asyncio.timeout(60):
                async for event in feed:
                    seen.append(event)
                    if len(seen) == 2:
                        feed.stop()
            assert [event.type for event in seen] == ["entry.created", "request.applied"]
            assert feed.cursor == seen[-1].id
            rest = [event async for event in tally.events(after=feed.cursor, follow=False)]
            assert rest == []

    asyncio.run(scenario())
