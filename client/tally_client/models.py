"""What the calls return: an adjustment's answer, a request's status, a batch's status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tally_client.errors import request_id_from_location

COMPLETED = "completed"
QUEUED = "queued"
REJECTED = "rejected"
REQUEST_FINAL = frozenset({COMPLETED, REJECTED})
BATCH_FINAL = frozenset({COMPLETED, "completed_with_rejections"})


@dataclass(frozen=True)
class Submission:
    """The answer to one adjustment: `completed` (201, applied) or `queued` (202, pending).

    `body` is the answer as sent: on the community route a Score object (201) or
    a request status object (202); on the points route seed 002's envelope.
    `replayed` is true when the key named an adjustment accepted before.
    """

    status: str
    request_id: int
    idempotency_key: str
    status_url: str
    replayed: bool
    body: dict[str, Any]

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    @classmethod
    def from_response(cls, response: httpx.Response, idempotency_key: str) -> Submission:
        location = response.headers.get("Location", "")
        request_id = request_id_from_location(location)
        if request_id is None:
            raise ValueError(f"the answer has no request status URL: Location={location!r}")
        return cls(
            status=COMPLETED if response.status_code == 201 else QUEUED,
            request_id=request_id,
            idempotency_key=idempotency_key,
            # Absolute: the API may answer a relative Location (RFC 9110, section 10.2.2).
            status_url=str(response.url.join(location)),
            replayed=response.headers.get("Idempotent-Replayed") == "true",
            body=response.json(),
        )


@dataclass(frozen=True)
class RequestStatus:
    """An adjustment request's status: `queued`, `processing`, `completed` or `rejected`.

    `score` is the Score object once completed; `error_code` and `error_message`
    say why a rejected request was refused.
    """

    id: int
    idempotency_key: str | None
    status: str
    attempts: int
    error_code: str | None
    error_message: str | None
    batch_id: str | None
    score: dict[str, Any] | None
    body: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.status in REQUEST_FINAL

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RequestStatus:
        error = body.get("error") or {}
        return cls(
            id=int(body["id"]),
            idempotency_key=body.get("idempotency_key"),
            status=str(body["status"]),
            attempts=int(body.get("attempts") or 0),
            error_code=error.get("code"),
            error_message=error.get("message"),
            batch_id=body.get("batch_id"),
            score=body.get("score"),
            body=dict(body),
        )


@dataclass(frozen=True)
class BatchStatus:
    """A bulk batch's status: `queued`, `processing`, `completed` or `completed_with_rejections`.

    `counts` holds the items per status (`queued`, `processing`, `completed`,
    `rejected`); `total` counts the items the batch created, `replayed_items` those
    accepted before under their own keys (not created again); `replayed` says that the
    whole batch was a replay of one sent before. `body` also has the import's
    `imported_rows` and `total_points_variation` when the batch came from a CSV file.
    """

    id: str
    status: str
    total: int
    counts: dict[str, int]
    replayed: bool
    body: dict[str, Any]
    replayed_items: int = 0

    @property
    def final(self) -> bool:
        return self.status in BATCH_FINAL

    @property
    def done(self) -> int:
        """How many items are final (applied or rejected)."""
        return self.counts.get(COMPLETED, 0) + self.counts.get(REJECTED, 0)

    @classmethod
    def from_json(cls, body: Mapping[str, Any], replayed: bool = False) -> BatchStatus:
        return cls(
            id=str(body["id"]),
            status=str(body["status"]),
            total=int(body["total"]),
            counts={name: int(n) for name, n in body["counts"].items()},
            replayed=replayed,
            body=dict(body),
            replayed_items=int(body.get("replayed") or 0),
        )


@dataclass(frozen=True)
class BulkPlan:
    """What a bulk batch would do (a dry run): items sent, to create, accepted before."""

    items: int
    new: int
    replayed: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> BulkPlan:
        return cls(int(body["items"]), int(body["new"]), int(body["replayed"]))


@dataclass(frozen=True)
class Event:
    """One event of the feed, as tally sends it (docs/events.md, "The envelope"): `id` its
    position (the cursor), `data` its type's payload. Deduplicate by `id`."""

    id: int
    type: str
    tenant_id: str
    account_id: str | None
    account_seq: int | None
    occurred_at: str
    data: dict[str, Any]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Event:
        return cls(
            id=int(body["id"]),
            type=str(body["type"]),
            tenant_id=str(body["tenant_id"]),
            account_id=body.get("account_id"),
            account_seq=body.get("account_seq"),
            occurred_at=str(body["occurred_at"]),
            data=dict(body.get("data") or {}),
        )


@dataclass(frozen=True)
class EventPage:
    """A page of the feed: its events, and where the next page starts."""

    events: list[Event]
    next_cursor: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> EventPage:
        events = [Event.from_json(event) for event in body["events"]]
        return cls(events, int(body["next_cursor"]))
