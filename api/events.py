"""The pull feed: GET /api/v2/events, a tenant's events past a cursor, long-polled with
`Prefer: wait=N` (docs/events.md, "Reading the feed")."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request

from api import schemas
from api.auth import current_principal, require_writer
from api.body import read_preferences, read_query
from api.links import this_url
from api.openapi import documented
from api.resources import db_session, event_announcements, release_session, resources, wait_slots
from shared.events.feed import EventsQuery
from shared.events.log import Event, event_document, read_events

bp = Blueprint("events", __name__, url_prefix="/api/v2/events")

# A wake-up lost on the way (Redis restarting, say) delays a long-poll by this much at most.
REREAD_SECONDS = 5.0


@bp.get("")
@documented(
    operation_id="listEvents",
    summary="The tenant's events past a cursor, in id order (long-polled with Prefer: wait=N)",
    tag="events",
    query=EventsQuery,
    headers={"Prefer": "wait=N: with no event past the cursor, wait up to N seconds for one"},
    responses={
        200: ("The events past the cursor (none when the wait ran out)", schemas.EventPage),
        400: ("A malformed parameter", schemas.Problem),
    },
)
@require_writer
def feed() -> Response:
    """Up to `limit` events past `after`; with none and `Prefer: wait=N`, the first that come
    within N seconds (capped by TALLY_MAX_WAIT)."""
    query = read_query(EventsQuery)
    tenant = current_principal().tenant_id

    def read() -> list[Event]:
        return read_events(
            db_session(), tenant, query.after, query.limit, query.types, query.account
        )

    preferred = read_preferences().wait
    wait = min(preferred or 0.0, resources().settings.max_wait)
    events = read()
    applied = None
    slots = wait_slots()
    # Beyond the process's waiting places the answer comes at once, as for a POST's wait.
    if not events and wait > 0 and slots.acquire(blocking=False):
        try:
            events = wait_for_events(tenant, read, wait)
            applied = wait
        finally:
            slots.release()
    next_cursor = events[-1].id if events else query.after
    response = jsonify(
        {
            "events": [event_document(event) for event in events],
            "next_cursor": next_cursor,
            "next": this_url(next_query(next_cursor)),
        }
    )
    if applied is not None:
        response.headers["Preference-Applied"] = f"wait={applied:g}"
    return response


def wait_for_events(tenant: str, read: Callable[[], list[Event]], wait: float) -> list[Event]:
    """Read until there are events or `wait` seconds have passed, reading again when the
    events pump announces this tenant. The announcement only wakes: the database answers."""
    deadline = time.monotonic() + wait
    listener = event_announcements()
    while True:
        # Registered before reading, so that an announcement made after the read wakes us.
        with listener.expecting(tenant) as announced:
            events = read()
            left = deadline - time.monotonic()
            if events or left <= 0:
                return events
            release_session()  # no connection held while waiting
            announced.wait(min(left, REREAD_SECONDS))


def next_query(cursor: int) -> str:
    """This request's query string with `after` set to the cursor."""
    params = [(k, v) for k, v in request.args.items(multi=True) if k != "after"]
    params.append(("after", str(cursor)))
    return urlencode(params)
