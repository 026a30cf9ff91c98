"""Every call of the client, written once as a generator of I/O steps.

A call yields `Send` (make this HTTP request; the driver answers with the
response or the transport error) and `Sleep` (pause), and returns its result.
`Client` drives calls with httpx.Client and time.sleep, `AsyncClient` with
httpx.AsyncClient and asyncio.sleep; nothing here does I/O itself.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from tally_client.errors import Rejected, Unreachable, WaitTimeout, error_for
from tally_client.models import (
    BatchStatus,
    BulkPlan,
    EventPage,
    Hold,
    LeaderboardPage,
    OwnRank,
    ReputationType,
    RequestStatus,
    Score,
    Standing,
    StatementPage,
    Submission,
    Transaction,
    User,
)
from tally_client.retries import Retries, retry_delay

T = TypeVar("T")
log = logging.getLogger("tally_client")

USER_AGENT = "tally-client/0.1"
CONNECT_TIMEOUT = 5.0
# Status polls start fast (a worker applies most requests in milliseconds) and slow down.
FIRST_POLL = 0.05
PAGE_SIZE = 1000
FEED_PAGE_SIZE = 100
# A long-poll the server could not hold (its waiting places were taken) is retried after this.
BUSY_FEED_PAUSE = 1.0


@dataclass(frozen=True)
class Send:
    """One HTTP request to make."""

    method: str
    url: str
    headers: Mapping[str, str]
    timeout: float
    params: Mapping[str, str | int] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None
    files: Mapping[str, tuple[str, bytes, str]] | None = None

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of httpx's Client.request and AsyncClient.request alike."""
        return {
            "method": self.method,
            "url": self.url,
            "headers": dict(self.headers),
            "params": self.params,
            "json": self.json,
            "data": self.data,
            "files": self.files,
            "timeout": httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout)),
        }


@dataclass(frozen=True)
class Sleep:
    """Pause for `seconds`."""

    seconds: float


Reply = httpx.Response | httpx.TransportError | None
Call = Generator[Send | Sleep, Reply, T]
OnProgress = Callable[[BatchStatus], None]


@dataclass(frozen=True)
class Endpoint:
    """Where the API is and how every request to it is made."""

    base_url: str
    token: str = field(repr=False)
    timeout: float
    retries: Retries

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **content: Any,
    ) -> Send:
        return Send(
            method,
            self.base_url.rstrip("/") + path,
            {
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
                **(headers or {}),
            },
            self.timeout if timeout is None else timeout,
            **content,
        )


def new_key() -> str:
    """A key for a call given none: made once per logical call, sent on every try."""
    return str(uuid.uuid4())


def send(endpoint: Endpoint, request: Send, *ok: int) -> Call[httpx.Response]:
    """The answer to `request`, retried while transient; a TallyError unless its status is `ok`."""
    retries = endpoint.retries
    give_up_at = time.monotonic() + retries.deadline
    tries = 0
    while True:
        reply = yield request
        tries += 1
        if reply is None:
            raise RuntimeError("a driver answered a Send with nothing")
        delay = retry_delay(reply, tries, retries)
        if delay is None or tries >= retries.attempts or time.monotonic() + delay > give_up_at:
            break
        # The first retry is a warning: the caller's thread may wait up to the deadline.
        log.log(
            logging.WARNING if tries == 1 else logging.INFO,
            "%s %s: %s; try %d in %.2f s (retrying for up to %.0f s more)",
            request.method,
            request.url,
            _describe(reply),
            tries + 1,
            delay,
            give_up_at - time.monotonic(),
        )
        yield Sleep(delay)
    if isinstance(reply, httpx.TransportError):
        raise Unreachable(
            f"{request.method} {request.url}: {_describe(reply)} "
            f"(after {tries} {'try' if tries == 1 else 'tries'})"
        ) from reply
    if reply.status_code not in ok:
        raise error_for(reply)
    return reply


def _describe(reply: httpx.Response | httpx.TransportError) -> str:
    if isinstance(reply, httpx.Response):
        return f"{reply.status_code} {reply.reason_phrase}"
    return f"{type(reply).__name__}: {reply}" if str(reply) else type(reply).__name__


def _prefer(wait: float | None) -> dict[str, str]:
    """No header leaves the server's default wait; 0 asks for a 202 at once."""
    if wait is None:
        return {}
    if wait <= 0:
        return {"Prefer": "respond-async"}
    return {"Prefer": f"wait={wait:g}"}


def _fields(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def adjust(
    endpoint: Endpoint,
    user: int | str,
    score: int,
    reputation_context: str | None,
    comment: str | None,
    idempotency_key: str | None,
    wait: float | None,
) -> Call[Submission]:
    """POST /api/v2/score/: 201 once applied, 202 while pending, Rejected for a 409."""
    key = idempotency_key or new_key()
    target = {"user_id": user} if isinstance(user, int) else {"username": user}
    request = endpoint.request(
        "POST",
        "/api/v2/score/",
        json=target | _fields(score=score, reputation_context=reputation_context, comment=comment),
        headers={"Idempotency-Key": key, **_prefer(wait)},
        timeout=endpoint.timeout + (wait or 0),  # the server may hold the answer that long
    )
    response = yield from send(endpoint, request, 201, 202)
    return Submission.from_response(response, key)


def points_operation(
    endpoint: Endpoint,
    path: str,
    body: Mapping[str, Any],
    idempotency_key: str | None,
    wait: float | None,
) -> Call[Submission]:
    """POST a points operation (seed 002's routes: an adjustment, a hold, a capture, a
    release, a reversal); its 409 envelope gets its reason filled."""
    key = idempotency_key or new_key()
    request = endpoint.request(
        "POST",
        path,
        json=_fields(**body),
        headers={"Idempotency-Key": key, **_prefer(wait)},
        timeout=endpoint.timeout + (wait or 0),
    )
    try:
        response = yield from send(endpoint, request, 201, 202)
    except Rejected as rejected:
        # The envelope carries the message, not the code: the request's status has it.
        if rejected.reason is None and rejected.request_id is not None:
            stored = yield from status(endpoint, rejected.request_id, None)
            rejected.reason = stored.error_code
        raise
    return Submission.from_response(response, key)


def points_path(user_id: int | str, *parts: str | int) -> str:
    """/admin/points/{user_id}/…, the user's id quoted."""
    return "/".join(["/admin/points", quote(str(user_id), safe=""), *map(str, parts)])


def reverse_score(
    endpoint: Endpoint,
    score_id: int,
    comment: str | None,
    idempotency_key: str | None,
    wait: float | None,
) -> Call[Submission]:
    """POST /api/v2/score/{id}/reverse: the reversal's Score object (201) or its status."""
    key = idempotency_key or new_key()
    request = endpoint.request(
        "POST",
        f"/api/v2/score/{int(score_id)}/reverse",
        json=_fields(comment=comment),
        headers={"Idempotency-Key": key, **_prefer(wait)},
        timeout=endpoint.timeout + (wait or 0),
    )
    response = yield from send(endpoint, request, 201, 202)
    return Submission.from_response(response, key)


def status(
    endpoint: Endpoint, request_id: int | None, idempotency_key: str | None
) -> Call[RequestStatus]:
    """GET a request's status by its id or by its idempotency key."""
    if (request_id is None) == (idempotency_key is None):
        raise TypeError("give exactly one of request_id or idempotency_key")
    if request_id is not None:
        request = endpoint.request("GET", f"/api/v2/score/requests/{int(request_id)}")
    else:
        request = endpoint.request(
            "GET", "/api/v2/score/requests", params={"idempotency_key": str(idempotency_key)}
        )
    response = yield from send(endpoint, request, 200)
    return RequestStatus.from_json(response.json())


def wait(
    endpoint: Endpoint,
    request_id: int | None,
    idempotency_key: str | None,
    timeout: float,
    poll: float,
) -> Call[RequestStatus]:
    """Poll a request until final: its completed status, or Rejected; WaitTimeout past `timeout`."""
    give_up_at = time.monotonic() + timeout
    pause = min(FIRST_POLL, poll)
    while True:
        current = yield from status(endpoint, request_id, idempotency_key)
        if current.final:
            break
        left = give_up_at - time.monotonic()
        if left <= 0:
            raise WaitTimeout(
                f"request {current.id} still {current.status} after {timeout} s", current
            )
        yield Sleep(min(pause, left))
        pause = min(pause * 2, poll)
    if current.status == "rejected":
        raise Rejected.from_status(current)
    return current


def bulk(
    endpoint: Endpoint,
    items: Iterable[Mapping[str, Any]],
    key: str | None,
    defaults: Mapping[str, Any],
    timeout: float | None,
) -> Call[BatchStatus]:
    """POST /api/v2/score/bulk: every item accepted as one batch (202), or ValidationError."""
    request = _bulk_request(endpoint, items, key or new_key(), defaults, timeout, dry_run=False)
    response = yield from send(endpoint, request, 202)
    return _accepted_batch(response)


def plan_bulk(
    endpoint: Endpoint,
    items: Iterable[Mapping[str, Any]],
    key: str,
    defaults: Mapping[str, Any],
    timeout: float | None,
) -> Call[BulkPlan]:
    """POST /api/v2/score/bulk?dry_run=true: what the batch would do; nothing is written."""
    request = _bulk_request(endpoint, items, key, defaults, timeout, dry_run=True)
    response = yield from send(endpoint, request, 200)
    return BulkPlan.from_json(response.json())


def _bulk_request(
    endpoint: Endpoint,
    items: Iterable[Mapping[str, Any]],
    key: str,
    defaults: Mapping[str, Any],
    timeout: float | None,
    dry_run: bool,
) -> Send:
    return endpoint.request(
        "POST",
        "/api/v2/score/bulk",
        params={"dry_run": "true"} if dry_run else None,
        json={"items": [dict(item) for item in items], **_fields(**defaults)},
        headers={"Idempotency-Key": key},
        timeout=timeout,
    )


def import_csv(
    endpoint: Endpoint, text: str | bytes, key: str | None, filename: str, timeout: float | None
) -> Call[BatchStatus]:
    """POST /api/v2/score/import/ with dry_run=false: the rows as one batch, or ValidationError.

    Without a key the server derives one from the file's content, the same on every try.
    """
    content = text.encode() if isinstance(text, str) else text
    request = endpoint.request(
        "POST",
        "/api/v2/score/import/",
        files={"csv_file": (filename, content, "text/csv")},
        data={"dry_run": "false"},
        headers={"Idempotency-Key": key} if key else None,
        timeout=timeout,
    )
    response = yield from send(endpoint, request, 202)
    return _accepted_batch(response)


def _accepted_batch(response: httpx.Response) -> BatchStatus:
    return BatchStatus.from_json(
        response.json(), replayed=response.headers.get("Idempotent-Replayed") == "true"
    )


def batch(endpoint: Endpoint, batch_id: str) -> Call[BatchStatus]:
    """GET /api/v2/score/batches/{id}."""
    request = endpoint.request("GET", f"/api/v2/score/batches/{quote(batch_id, safe='')}")
    response = yield from send(endpoint, request, 200)
    return BatchStatus.from_json(response.json())


def follow_batch(
    endpoint: Endpoint, batch_id: str, timeout: float, poll: float, on_progress: OnProgress | None
) -> Call[BatchStatus]:
    """Poll a batch until every item is final, calling `on_progress` with each status read."""
    give_up_at = time.monotonic() + timeout
    pause = min(FIRST_POLL, poll)
    while True:
        current = yield from batch(endpoint, batch_id)
        if on_progress is not None:
            on_progress(current)
        if current.final:
            return current
        left = give_up_at - time.monotonic()
        if left <= 0:
            raise WaitTimeout(
                f"batch {batch_id} still {current.status} ({current.done}/{current.total}) "
                f"after {timeout} s",
                current,
            )
        yield Sleep(min(pause, left))
        pause = min(pause * 2, poll)


@dataclass(frozen=True)
class Listing(Generic[T]):
    """A list route paged by limit and offset: where its items and their count are, and
    whether they come in the points API's envelope."""

    path: str
    parse: Callable[[Mapping[str, Any]], T]
    items: str = "results"
    count: str = "count"
    envelope: bool = False


def list_page(
    endpoint: Endpoint, listing: Listing[T], params: Mapping[str, Any], offset: int
) -> Call[tuple[list[T], int]]:
    """One page of a listing from `offset`, and how many items the listing has."""
    query = _query(**params, limit=PAGE_SIZE, offset=offset)
    response = yield from send(endpoint, endpoint.request("GET", listing.path, params=query), 200)
    body = response.json()
    if listing.envelope:
        body = body["data"]
    return [listing.parse(item) for item in body[listing.items]], int(body[listing.count])


def batch_items_listing(batch_id: str) -> Listing[RequestStatus]:
    return Listing(
        f"/api/v2/score/batches/{quote(batch_id, safe='')}/items", RequestStatus.from_json
    )


SCORES = Listing("/api/v2/score/", Score.from_json)


def transactions_listing(user_id: int | str) -> Listing[Transaction]:
    return Listing(
        points_path(user_id, "transactions"), Transaction.from_json, "items", "total", True
    )


def get_hold(endpoint: Endpoint, user_id: int | str, hold_id: int) -> Call[Hold]:
    """GET /admin/points/{user_id}/holds/{hold_id}."""
    request = endpoint.request("GET", points_path(user_id, "holds", hold_id))
    response = yield from send(endpoint, request, 200)
    return Hold.from_json(response.json()["data"])


def reputation_types(endpoint: Endpoint) -> Call[list[ReputationType]]:
    """GET /api/v2/score/reputation_types/."""
    request = endpoint.request("GET", "/api/v2/score/reputation_types/")
    response = yield from send(endpoint, request, 200)
    return [ReputationType.from_json(kind) for kind in response.json()]


def account_status(
    endpoint: Endpoint, user_id: int | str, change: str, points_type: str | None,
    reason: str | None,
) -> Call[Standing]:  # fmt: skip
    """POST /admin/points/{user_id}/freeze or /unfreeze: the account with its new status."""
    body = _fields(points_type=points_type, reason=reason)
    request = endpoint.request("POST", points_path(user_id, change), json=body)
    response = yield from send(endpoint, request, 200)
    return Standing.from_json(response.json()["data"])


def request_id_of(request: Submission | RequestStatus | int) -> int:
    if isinstance(request, Submission):
        return request.request_id
    if isinstance(request, RequestStatus):
        return request.id
    return int(request)


def batch_id_of(batch: BatchStatus | str) -> str:
    return batch.id if isinstance(batch, BatchStatus) else batch


def events_page(
    endpoint: Endpoint,
    after: int,
    types: Iterable[str] | None,
    account: str | None,
    limit: int,
    wait: float,
) -> Call[EventPage]:
    """GET /api/v2/events: the events past `after`; with none, the first within `wait` s."""
    params: dict[str, str | int] = {"after": int(after), "limit": int(limit)}
    if types:
        params["types"] = ",".join(types)
    if account is not None:
        params["account"] = account
    request = endpoint.request(
        "GET",
        "/api/v2/events",
        params=params,
        headers={"Prefer": f"wait={wait:g}"} if wait > 0 else {},
        timeout=endpoint.timeout + max(wait, 0),
    )
    response = yield from send(endpoint, request, 200)
    page = EventPage.from_json(response.json())
    if not page.events and wait > 0 and "Preference-Applied" not in response.headers:
        # Answered at once rather than held: do not ask again straight away.
        yield Sleep(min(wait, BUSY_FEED_PAUSE))
    return page


def _query(**params: Any) -> dict[str, str | int]:
    """Query parameters: None left out, booleans as `true`, datetimes as ISO 8601."""
    out: dict[str, str | int] = {}
    for name, value in params.items():
        if value is None or value is False:
            continue
        if value is True:
            out[name] = "true"
        elif hasattr(value, "isoformat"):
            out[name] = value.isoformat()
        else:
            out[name] = value
    return out


def leaderboard(endpoint: Endpoint, params: Mapping[str, Any]) -> Call[LeaderboardPage]:
    """GET /api/v2/score/leaderboard/: one page of a board."""
    request = endpoint.request("GET", "/api/v2/score/leaderboard/", params=_query(**params))
    response = yield from send(endpoint, request, 200)
    return LeaderboardPage.from_json(response.json())


def own_rank(endpoint: Endpoint, params: Mapping[str, Any]) -> Call[OwnRank]:
    """GET /api/v2/score/leaderboard/me: a user's place on a board."""
    request = endpoint.request("GET", "/api/v2/score/leaderboard/me", params=_query(**params))
    response = yield from send(endpoint, request, 200)
    return OwnRank.from_json(response.json())


def balances(endpoint: Endpoint, user_id: int | str, as_of: Any) -> Call[list[Standing]]:
    """GET /admin/points/{user_id}: the user's accounts, now or as of a moment."""
    request = endpoint.request("GET", points_path(user_id), params=_query(as_of=as_of))
    response = yield from send(endpoint, request, 200)
    return [Standing.from_json(account) for account in response.json()["data"]]


def statement_page(
    endpoint: Endpoint, path: str, params: Mapping[str, Any], after: int, envelope: bool
) -> Call[StatementPage]:
    """One page of a statement: GET /admin/points/{user_id}/statement (in the points API's
    envelope) or GET /api/v2/users/{id}/statement."""
    query = _query(**params, after=after or None)
    response = yield from send(endpoint, endpoint.request("GET", path, params=query), 200)
    body = response.json()
    return StatementPage.from_json(body["data"] if envelope else body)


USERS = Listing("/api/v2/users/", User.from_json)


def users_path(user_id: int, *parts: str) -> str:
    """/api/v2/users/{id}/…"""
    return "/".join([f"/api/v2/users/{int(user_id)}", *parts])


def get_user(endpoint: Endpoint, user_id: int, as_of: Any) -> Call[User]:
    """GET /api/v2/users/{id}: the user, with its reputation now or as of a moment."""
    request = endpoint.request("GET", users_path(user_id), params=_query(as_of=as_of))
    response = yield from send(endpoint, request, 200)
    return User.from_json(response.json())


def create_user(endpoint: Endpoint, fields: Mapping[str, Any]) -> Call[User]:
    """POST /api/v2/users/: the new user (201); Conflict if its username or external_id
    is taken."""
    request = endpoint.request("POST", "/api/v2/users/", json=_fields(**fields))
    response = yield from send(endpoint, request, 201)
    return User.from_json(response.json())


def export_request(endpoint: Endpoint, params: Mapping[str, Any]) -> Send:
    """GET /api/v2/export, streamed by the driver (no retry: resume with `after`)."""
    return endpoint.request("GET", "/api/v2/export", params=_query(**params))
