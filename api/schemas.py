"""Response shapes as pydantic models: the serializers build them, /openapi.json documents them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel

from shared.ledger.apply import REJECTION_MESSAGES

# What `code` (problems) and `reason` (the points API's envelope) may say.
REJECTION_CODES = (*REJECTION_MESSAGES, "already_reversed", "not_reversible", "unknown_points_type")
CODES = (
    "What kind of refusal, machine-readable: validation (400: `errors` names the fields),"
    " unauthorized (401), forbidden (403), not_found (404), method_not_allowed (405),"
    " request_timeout (408), conflict (409: the user exists), content_too_large (413),"
    " unsupported_media_type (415), idempotency_key_reused (422), too_many_requests (429),"
    " unavailable or not_ready (503); a 409 that refuses an adjustment says why: "
    + ", ".join(REJECTION_CODES)
)
REQUEST_ID = "The adjustment request a 409 refused (its status URL keeps the outcome)"


class ScoreUser(BaseModel):
    id: int
    username: str
    real_name: str
    email: str
    description: str
    avatar: str
    reputation: int = Field(description="The balance right after this entry")


class ScoreCreator(BaseModel):
    id: int
    username: str
    avatar: str


class Score(BaseModel):
    """The community API's Score object: one ledger entry."""

    id: int
    user: ScoreUser
    score: int
    reputation_type: int
    reputation_type_description: str
    comment: str
    reputation_context: str
    created_by: ScoreCreator
    reputed_at: str = Field(description="When it was applied, UTC, ISO 8601 with Z")


class RequestError(BaseModel):
    code: str
    message: str


class RequestStatus(BaseModel):
    """Where an accepted adjustment request stands."""

    id: int
    idempotency_key: str | None
    status: str = Field(description="queued, processing, completed or rejected")
    attempts: int
    last_error: str | None
    error: RequestError | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    batch_id: str | None
    cut: int = Field(
        description="What the points type's cap took off the amount asked for (docs/periods.md)"
    )
    score: Score | None


class FieldErrorOut(BaseModel):
    """One input at fault."""

    field: str = Field(
        description="The body member, query parameter or header at fault (`body`: the body"
        " as a whole)"
    )
    code: str = Field(
        description="What is wrong with it, machine-readable: required, integer, zero,"
        " too_long, empty_segment, invalid_json, unknown, taken, reused, ..."
    )
    message: str = Field(description="The same, for people")


class Problem(BaseModel):
    """RFC 9457 problem details: its five members, and tally's `code`, `errors` and
    `request_id` (a route's own answers may add more, named in their schemas)."""

    model_config = {"extra": "allow"}

    type: str = Field(
        description="The problem type, a URI: https://tally.dev/problems/ and its slug",
        json_schema_extra={"format": "uri"},
    )
    title: str = Field(description="The HTTP status's phrase")
    status: int = Field(description="The HTTP status", ge=400, le=599)
    detail: str = Field(description="What went wrong with this request, for people")
    instance: str | None = Field(
        None,
        description="RFC 9457's URI of this occurrence: not sent; the answer's X-Request-ID"
        " names the occurrence in tally's logs",
    )
    code: str = Field(description=CODES)
    errors: list[FieldErrorOut] | None = Field(
        None, description="Every input at fault (400), or the reused Idempotency-Key (422)"
    )
    request_id: int | None = Field(None, description=REQUEST_ID)


class NotReady(Problem):
    """GET /readyz's 503: which dependency is not ready."""

    checks: dict[str, str] = Field(
        description="database, schema, redis and (when TALLY_REPLICATION is set) replication:"
        " `ok`, or what is wrong with it"
    )


class Health(BaseModel):
    status: str
    checks: dict[str, str] | None = Field(
        None,
        description="/readyz: each check `ok`; under TALLY_REPLICATION=preferred, replication"
        " says when acknowledgements are not replicated",
    )


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


class ScorePage(BaseModel):
    """A DRF-style page of Score objects."""

    count: int
    next: str | None
    previous: str | None
    results: list[Score]


class LeaderboardEntry(BaseModel):
    user_id: int
    user__username: str
    user__real_name: str
    total_score: int
    rank: int = Field(description="The place on the board, as `ranking` counts it")


class PeriodOut(BaseModel):
    """The period a board sums, in the tenant's time zone."""

    period: str = Field(description="day, week, month, quarter, year or all")
    starts: str | None = Field(description="Its first day (local date); null for all")
    from_: str | None = Field(alias="from", description="Its first moment, UTC")
    model_config = {"populate_by_name": True}
    to: str | None = Field(description="The first moment after it, UTC")


class LeaderboardPage(BaseModel):
    count: int
    next: str | None
    previous: str | None
    results: list[LeaderboardEntry]
    period: PeriodOut


class OwnRank(BaseModel):
    """One user's place on a board."""

    user_id: int
    user__username: str
    user__real_name: str
    total_score: int = Field(description="0 when the user has no entry on the board")
    rank: int | None = Field(description="null when the user has no entry on the board")
    count: int = Field(description="How many users are on the board")
    period: PeriodOut


class ReputationTypeOut(BaseModel):
    id: int
    name: str
    points: int | None


class ReputationTypeList(RootModel[list[ReputationTypeOut]]):
    pass


class PointAccount(BaseModel):
    """The points API's PointAccountResponse."""

    id: str
    tenant_id: str
    user_id: str
    points_type: str
    balance: int
    frozen_balance: int
    expired_points: int
    total_earned: int
    total_spent: int
    exchange_rate: int
    status: str
    version: int
    created_at: str
    updated_at: str


class PointTransaction(BaseModel):
    """The points API's PointTransactionResponse; ledger fields are null until it is applied."""

    id: str | None
    account_id: str
    user_id: str
    amount: int
    balance_before: int | None
    balance_after: int | None
    type: str
    status: str
    reason: str
    description: str
    source: str
    related_id: str
    idempotency_key: str | None
    expires_at: str | None
    created_at: str
    updated_at: str


class PointOperationData(BaseModel):
    account: PointAccount
    transaction: PointTransaction


class HoldOut(BaseModel):
    """A hold: `pending` until the worker applies it, then open, captured, released or
    timed_out (a rejected hold is its request's 409, and stays `rejected` here)."""

    id: int
    account_id: str
    amount: int
    captured: int
    status: str
    expires_at: str | None
    created_at: str
    closed_at: str | None


class HoldOperationData(PointOperationData):
    hold: HoldOut


class Envelope(BaseModel):
    """The points API's envelope (SimpleResponse): `code` 0 on success, else the HTTP status."""

    code: int
    message: str
    timestamp: str


class ErrorEnvelope(Envelope):
    """The points API's answer that says no: `code` is its HTTP status, as in the points
    service's SimpleResponse, and `reason` the machine-readable code beside it."""

    reason: str = Field(description=CODES)
    errors: list[FieldErrorOut] | None = None
    request_id: int | None = Field(None, description=REQUEST_ID)


class PointOperationResponse(Envelope):
    data: PointOperationData


class HoldOperationResponse(Envelope):
    data: HoldOperationData


class HoldResponse(Envelope):
    data: HoldOut


class PointAccountResponse(Envelope):
    data: PointAccount


class PointAccountsResponse(Envelope):
    data: list[PointAccount]


class TransactionPage(BaseModel):
    items: list[PointTransaction]
    total: int
    limit: int
    offset: int


class PointTransactionsResponse(Envelope):
    data: TransactionPage


class UserOut(BaseModel):
    """A user, with the balance of the default points type as `reputation`."""

    id: int
    username: str
    external_id: str | None
    real_name: str
    email: str
    avatar: str
    description: str
    role: str
    reputation: int
    as_of: str | None = Field(
        None, description="With `?as_of=`: the moment `reputation` is given for"
    )


class UserPage(BaseModel):
    """A DRF-style page of users."""

    count: int
    next: str | None
    previous: str | None
    results: list[UserOut]


class BatchCounts(BaseModel):
    queued: int
    processing: int
    completed: int
    rejected: int


class BatchStatus(BaseModel):
    """Where a bulk batch stands."""

    id: str
    status: str = Field(description="queued, processing, completed or completed_with_rejections")
    total: int = Field(description="the items this batch created")
    replayed: int = Field(
        description="items whose own idempotency key an earlier request has with the same"
        " content: accepted before, not created again, not part of `total`"
    )
    counts: BatchCounts
    created_at: str
    completed_at: str | None
    progress: float = Field(description="share of items that are final, 0 to 1")


class ImportRowError(BaseModel):
    row_number: int
    field: str
    message: str


class ImportReport(BaseModel):
    """The community import's dry-run report."""

    total_rows: int
    valid_rows: int
    invalid_rows: int
    total_points_variation: int
    error_count: int = Field(description="every error; `errors` lists the first 1,000")
    errors: list[ImportRowError]


class ImportProblem(Problem):
    """A refused import: the bad rows (the first 1,000) and their count, or the bad fields."""

    errors: list[ImportRowError] | list[FieldErrorOut] | None = None  # type: ignore[assignment]
    error_count: int | None = None


class ItemErrorOut(FieldErrorOut):
    """One input at fault in one item of a batch."""

    index: int = Field(description="The item's position in the batch, from 0")


class BulkProblem(Problem):
    """A refused batch: the bad items by index (the first 1,000) and their count."""

    errors_by_item: list[ItemErrorOut] | None = None
    error_count: int | None = None


class BulkDryRun(BaseModel):
    """What a bulk batch would do (`dry_run=true`): nothing is written."""

    dry_run: bool
    items: int = Field(description="the items sent")
    new: int = Field(description="the items the batch would create")
    replayed: int = Field(description="the items accepted before under their own keys")


class ImportAccepted(BatchStatus):
    imported_rows: int
    total_points_variation: int
    batch_id: str
    status_url: str


class RequestStatusPage(BaseModel):
    count: int
    next: str | None
    previous: str | None
    results: list[RequestStatus]


class Event(BaseModel):
    """One event, as the feed, a webhook and the stream carry it (docs/events.md)."""

    id: int = Field(description="Global position: only grows in the order events become visible")
    type: str = Field(description="One of the types of docs/events.md, e.g. entry.created")
    tenant_id: str
    account_id: str | None = Field(description="None for tenant-wide events (batches)")
    account_seq: int | None = Field(description="1, 2, 3... per account, without gaps")
    occurred_at: str = Field(description="The time of the change's transaction, UTC, ISO 8601")
    data: dict[str, Any] = Field(description="The type's payload")


class EventPage(BaseModel):
    """A page of the feed: pass `next_cursor` as `after` to read on."""

    events: list[Event]
    next_cursor: int = Field(description="The id of the last event here, or `after` if none")
    next: str = Field(description="This request's URL with `after=next_cursor`")


class WebhookEndpointOut(BaseModel):
    """A webhook endpoint (its secrets are never shown again after they are made)."""

    id: str
    url: str
    types: list[str] = Field(description="The event types it gets; empty: all")
    description: str
    status: str = Field(description="active or disabled")
    disabled_reason: str | None
    failing_since: str | None = Field(description="Since when no attempt got a 2xx")
    previous_secret_until: str | None = Field(
        description="Until when the secret before the last rotation still signs"
    )
    created_at: str
    updated_at: str


class WebhookEndpointCreated(WebhookEndpointOut):
    secret: str = Field(description="whsec_<base64>: shown once; verify signatures with it")


class WebhookEndpointList(BaseModel):
    results: list[WebhookEndpointOut]


class WebhookSecret(BaseModel):
    secret: str = Field(description="The new secret, shown once")
    previous_secret_until: str | None = Field(
        description="Deliveries are signed with both secrets until then"
    )


class WebhookRedelivery(BaseModel):
    redelivered: int = Field(description="Deliveries put back to pending (or created)")


class WebhookDeliveryOut(BaseModel):
    """One line of an endpoint's delivery log."""

    event_id: int = Field(description="Also the webhook-id header of every attempt")
    account_id: str | None
    status: str = Field(description="pending, delivered or failed")
    attempts: int
    last_status_code: int | None
    last_latency_ms: int | None
    last_error: str | None
    first_attempt_at: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None
    created_at: str | None


class WebhookDeliveryPage(BaseModel):
    """A page of the delivery log in event order: pass `next_cursor` as `after`."""

    results: list[WebhookDeliveryOut]
    next_cursor: int
    next: str | None = Field(description="The next page's URL, or null at the end")


class StandingOut(BaseModel):
    """An account's figures at a moment."""

    balance: int
    frozen_balance: int
    expired_points: int
    total_earned: int
    total_spent: int
    entries: int = Field(description="How many entries it had by then")


class StatementTotal(BaseModel):
    type: str = Field(description="The entry type (earn, adjust, reversal, expire, ...)")
    amount: int
    entries: int


class StatementEntry(BaseModel):
    id: str = Field(description="The entry's ULID (the points API's transaction id)")
    entry_id: int = Field(description="The entry's number: `after` resumes from it")
    request_id: int
    type: str
    amount: int
    frozen_amount: int
    expired: int
    balance_before: int
    balance_after: int
    reputation_context: str
    comment: str
    reason: str
    source: str
    related_id: str
    idempotency_key: str | None
    created_at: str


class StatementOut(BaseModel):
    """An account over [from, to): how it opened and closed, totals by entry type, and a
    page of its entries in order (`next` links the following page)."""

    model_config = {"populate_by_name": True}

    user_id: str
    points_type: str
    from_: str | None = Field(alias="from")
    to: str
    opening: StandingOut
    closing: StandingOut
    totals: list[StatementTotal]
    entries: list[StatementEntry]
    next: str | None


class StatementResponse(Envelope):
    data: StatementOut | None = None
