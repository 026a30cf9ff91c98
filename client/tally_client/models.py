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

    @property
    def hold(self) -> Hold | None:
        """The hold a points operation placed, captured or released (None for others)."""
        data = self.body.get("data")
        held = data.get("hold") if isinstance(data, dict) else None
        return Hold.from_json(held) if isinstance(held, dict) else None

    @property
    def transaction(self) -> Transaction | None:
        """The points API's transaction of this operation (None on the community route)."""
        data = self.body.get("data")
        entry = data.get("transaction") if isinstance(data, dict) else None
        return Transaction.from_json(entry) if isinstance(entry, dict) else None

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


@dataclass(frozen=True)
class Period:
    """The period a board sums: `starts` its first local day (None for `all`), `begins`
    and `ends` its bounds in UTC (ISO 8601)."""

    period: str
    starts: str | None
    begins: str | None
    ends: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Period:
        return cls(str(body["period"]), body.get("starts"), body.get("from"), body.get("to"))


@dataclass(frozen=True)
class Ranked:
    """A user's place on a board: `rank` None when the user has no entry on it."""

    user_id: int
    username: str
    real_name: str
    total_score: int
    rank: int | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Ranked:
        return cls(
            int(body["user_id"]),
            str(body["user__username"]),
            str(body["user__real_name"]),
            int(body["total_score"]),
            None if body.get("rank") is None else int(body["rank"]),
        )


@dataclass(frozen=True)
class LeaderboardPage:
    """A page of a board: its rows, how many users are on the board, and its period."""

    rows: list[Ranked]
    count: int
    period: Period

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LeaderboardPage:
        rows = [Ranked.from_json(row) for row in body["results"]]
        return cls(rows, int(body["count"]), Period.from_json(body["period"]))


@dataclass(frozen=True)
class OwnRank:
    """One user's place on a board, and how many users are on it."""

    place: Ranked
    count: int
    period: Period

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> OwnRank:
        return cls(Ranked.from_json(body), int(body["count"]), Period.from_json(body["period"]))


@dataclass(frozen=True)
class Standing:
    """An account's figures, now or at a moment; `status` (active or frozen) where the
    answer says it (the accounts as they are, not as they stood)."""

    points_type: str
    balance: int
    frozen_balance: int
    expired_points: int
    total_earned: int
    total_spent: int
    status: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any], points_type: str = "") -> Standing:
        return cls(
            str(body.get("points_type", points_type)),
            int(body["balance"]),
            int(body["frozen_balance"]),
            int(body["expired_points"]),
            int(body["total_earned"]),
            int(body["total_spent"]),
            body.get("status"),
        )


@dataclass(frozen=True)
class StatementEntry:
    """One entry of a statement, with the balance before and after it."""

    id: str
    entry_id: int
    type: str
    amount: int
    balance_before: int
    balance_after: int
    created_at: str
    body: dict[str, Any]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> StatementEntry:
        return cls(
            str(body["id"]),
            int(body["entry_id"]),
            str(body["type"]),
            int(body["amount"]),
            int(body["balance_before"]),
            int(body["balance_after"]),
            str(body["created_at"]),
            dict(body),
        )


@dataclass(frozen=True)
class StatementPage:
    """A page of a statement: the opening and closing figures and totals by entry type
    (the same on every page), its entries, and the cursor of the next page (None: last)."""

    opening: Standing
    closing: Standing
    totals: dict[str, tuple[int, int]]
    entries: list[StatementEntry]
    next_after: int | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> StatementPage:
        points_type = str(body["points_type"])
        entries = [StatementEntry.from_json(entry) for entry in body["entries"]]
        return cls(
            Standing.from_json(body["opening"], points_type),
            Standing.from_json(body["closing"], points_type),
            {t["type"]: (int(t["amount"]), int(t["entries"])) for t in body["totals"]},
            entries,
            entries[-1].entry_id if body.get("next") and entries else None,
        )


@dataclass(frozen=True)
class Hold:
    """A hold of points: `pending` until applied, then open, captured, released or
    timed_out."""

    id: int
    account_id: str
    amount: int
    captured: int
    status: str
    expires_at: str | None
    body: dict[str, Any]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Hold:
        return cls(
            int(body["id"]),
            str(body["account_id"]),
            int(body["amount"]),
            int(body["captured"]),
            str(body["status"]),
            body.get("expires_at"),
            dict(body),
        )


@dataclass(frozen=True)
class Score:
    """One ledger entry as the community API lists it."""

    id: int
    user_id: int
    username: str
    score: int
    reputation_type: int
    reputation_context: str
    comment: str
    reputed_at: str
    body: dict[str, Any]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Score:
        return cls(
            int(body["id"]),
            int(body["user"]["id"]),
            str(body["user"]["username"]),
            int(body["score"]),
            int(body["reputation_type"]),
            str(body["reputation_context"]),
            str(body["comment"]),
            str(body["reputed_at"]),
            dict(body),
        )


@dataclass(frozen=True)
class Transaction:
    """One transaction of the points API: `id` (a ULID) and the balances are None until
    it is applied."""

    id: str | None
    account_id: str
    amount: int
    type: str
    status: str
    balance_after: int | None
    reason: str
    created_at: str
    body: dict[str, Any]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Transaction:
        after = body.get("balance_after")
        return cls(
            body.get("id"),
            str(body["account_id"]),
            int(body["amount"]),
            str(body["type"]),
            str(body["status"]),
            None if after is None else int(after),
            str(body.get("reason", "")),
            str(body["created_at"]),
            dict(body),
        )


@dataclass(frozen=True)
class ReputationType:
    id: int
    name: str
    points: int | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ReputationType:
        return cls(int(body["id"]), str(body["name"]), body.get("points"))


@dataclass(frozen=True)
class User:
    """A user of the tenant; `reputation` is its balance of the default points type, now
    or, when read with `as_of`, as it stood then (`as_of` says when)."""

    id: int
    username: str
    external_id: str | None
    real_name: str
    email: str
    avatar: str
    description: str
    role: str
    reputation: int
    as_of: str | None
    body: dict[str, Any]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> User:
        return cls(
            int(body["id"]),
            str(body["username"]),
            body.get("external_id"),
            str(body["real_name"]),
            str(body["email"]),
            str(body["avatar"]),
            str(body["description"]),
            str(body["role"]),
            int(body["reputation"]),
            body.get("as_of"),
            dict(body),
        )
