"""Iterating over the event feed from a saved cursor: `Client.events` and `AsyncClient.events`."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

from tally_client.models import Event, EventPage

# How long each request of a followed feed asks the server to hold it (the server caps it
# at its TALLY_MAX_WAIT); below the 30 s idle timeout of many proxies.
DEFAULT_FEED_WAIT = 25.0


class _Position:
    """Where a feed is: `cursor`, the id of the last event handed out (save it once the event
    is handled; pass it as `after` to resume), and the events fetched but not handed out."""

    def __init__(self, after: int, follow: bool) -> None:
        self.cursor = after
        self._follow = follow
        self._next_page = after
        self._fetched: deque[Event] = deque()
        self._stopped = False

    def stop(self) -> None:
        """End the iteration: no event is handed out after this (a long-poll under way
        finishes first, within its wait)."""
        self._stopped = True

    def _hand_out(self) -> Event:
        event = self._fetched.popleft()
        self.cursor = event.id
        return event

    def _take(self, page: EventPage) -> bool:
        """Keep a page's events; whether to go on (a feed not followed ends when caught up)."""
        self._fetched.extend(page.events)
        self._next_page = page.next_cursor
        return bool(page.events) or self._follow


class EventFeed(_Position):
    """The events past a cursor, in id order: for ever when followed (each request a
    long-poll), else until caught up. A failure the retries could not overcome (say,
    Unreachable) ends the iteration with it: start again from `cursor`."""

    def __init__(self, fetch: Callable[[int], EventPage], after: int, follow: bool) -> None:
        super().__init__(after, follow)
        self._fetch = fetch

    def __iter__(self) -> EventFeed:
        return self

    def __next__(self) -> Event:
        while not self._stopped:
            if self._fetched:
                return self._hand_out()
            if not self._take(self._fetch(self._next_page)):
                break
        raise StopIteration


class AsyncEventFeed(_Position):
    """EventFeed for `async for`."""

    def __init__(
        self, fetch: Callable[[int], Awaitable[EventPage]], after: int, follow: bool
    ) -> None:
        super().__init__(after, follow)
        self._fetch = fetch

    def __aiter__(self) -> AsyncEventFeed:
        return self

    async def __anext__(self) -> Event:
        while not self._stopped:
            if self._fetched:
                return self._hand_out()
            if not self._take(await self._fetch(self._next_page)):
                break
        raise StopAsyncIteration
