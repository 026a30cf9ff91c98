"""Webhook endpoints (their URLs and secrets), the fan-out of numbered events into
deliveries, redelivery, and the delivery log; sending is shared.events.webhook_sender.

A delivery is one event for one endpoint (docs/events.md, "Webhooks"). The fan-out
reads the log past its cursor and writes every delivery due in one statement, in the
transaction that moves the cursor: an event is handed to an endpoint once, and a
crash before the commit leaves the cursor where it was.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from redis import Redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from shared.events.log import EVENT_TYPES, FAN_OUT_LOCK, advance_cursor, cursor_position
from shared.fields import BIGINT_MAX, format_timestamp, is_blank, parse_integer
from shared.intake.validation import FieldError, InvalidInput
from shared.models import EndpointStatus, WebhookDelivery, WebhookEndpoint
from shared.platform.keys import RedisKeys
from shared.reads.query_params import DEFAULT_LIMIT, Limit

# The fan-out's cursor in event_cursors.
WEBHOOKS_CURSOR = "webhooks"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
DEFAULT_OVERLAP_HOURS = 24.0
MAX_OVERLAP_HOURS = 24.0 * 30
URL_MAX = 2048
DESCRIPTION_MAX = 1000
ULID_LENGTH = 26
# A queued delivery task marks its endpoint this long: the pump sends no twin meanwhile,
# and a task lost on the way is sent again once the mark lapses.
MARK_SECONDS = 30


def _known_types(types: list[str]) -> list[str]:
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
    return sorted(set(types))


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must not contain unpaired surrogates") from None
    return value


Url = Annotated[str, Field(min_length=1, max_length=URL_MAX), AfterValidator(_storable)]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX), AfterValidator(_storable)]


class EndpointInput(BaseModel):
    """The body of POST /api/v2/webhooks/: where to send, which types (none: all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Url
    types: list[str] = Field(default_factory=list, description="event types; empty: all")
    description: Description = ""

    _types = field_validator("types")(_known_types)


class EndpointChange(BaseModel):
    """The body of PATCH /api/v2/webhooks/{id}: the fields to change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Url | None = None
    types: list[str] | None = None
    description: Description | None = None
    status: Literal["active", "disabled"] | None = None

    @field_validator("types")
    @classmethod
    def _types(cls, types: list[str] | None) -> list[str] | None:
        return None if types is None else _known_types(types)


class RotateInput(BaseModel):
    """The body of POST .../rotate-secret: how long the previous secret still signs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    overlap_hours: float = Field(DEFAULT_OVERLAP_HOURS, ge=0, le=MAX_OVERLAP_HOURS)


EventId = Annotated[int, Field(ge=0, le=BIGINT_MAX)]


class RedeliverInput(BaseModel):
    """The body of POST .../redeliver: one event, a range of ids, or every event after one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: EventId | None = None
    from_id: EventId | None = None
    to_id: EventId | None = None
    after: Annotated[int, Field(ge=0, le=BIGINT_MAX - 1)] | None = None

    def span(self) -> tuple[int, int]:
        """The ids to redeliver, first and last (inclusive); InvalidInput if the body is not
        exactly one of the three forms."""
        given = [
            form
            for form, present in (
                ("event_id", self.event_id is not None),
                ("from_id", self.from_id is not None or self.to_id is not None),
                ("after", self.after is not None),
            )
            if present
        ]
        if not given:
            raise InvalidInput(
                [FieldError("event_id", "required", "give event_id, from_id and to_id, or after")]
            )
        if len(given) > 1:
            message = f"give only one of {', '.join(given)}"
            raise InvalidInput([FieldError(form, "conflict", message) for form in given])
        if self.event_id is not None:
            return self.event_id, self.event_id
        if self.after is not None:
            return self.after + 1, BIGINT_MAX
        missing = [name for name in ("from_id", "to_id") if getattr(self, name) is None]
        if missing:
            raise InvalidInput([FieldError(n, "required", "give both ends") for n in missing])
        assert self.from_id is not None and self.to_id is not None
        if self.from_id > self.to_id:
            raise InvalidInput([FieldError("to_id", "out_of_range", "must be at least from_id")])
        return self.from_id, self.to_id


# Addresses, the URL check

Resolver = Callable[[str, int], Sequence[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def public_address(address: str) -> bool:
    """Whether tally may send to this IP address when private ones are not allowed."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    refused = (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )
    return ip.is_global and not refused


def url_refusal(url: str, allow_private: bool, resolver: Resolver = resolve) -> str | None:
    """Why tally will not send to `url` (a message), or None: http(s) only, and a host that
    resolves to public addresses only, unless private ones are allowed. Checked when an
    endpoint is saved and again before each round of deliveries (DNS can change)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "the URL must not carry credentials"
    try:
        addresses = resolver(parts.hostname, port)
    except (OSError, ValueError):
        return f"the host {parts.hostname} does not resolve"
    if not addresses:
        return f"the host {parts.hostname} does not resolve"
    if allow_private:
        return None
    for address in addresses:
        if not public_address(address):
            return f"{parts.hostname} resolves to {address}, a private or reserved address"
    return None


def check_url(url: str, allow_private: bool, resolver: Resolver = resolve) -> None:
    """InvalidInput naming `url` if tally will not send there."""
    refusal = url_refusal(url, allow_private, resolver)
    if refusal is not None:
        raise InvalidInput([FieldError("url", "not_allowed", refusal)])


# Endpoints


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form, `whsec_<base64 of 32 random bytes>`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def create_endpoint(
    session: Session,
    tenant_id: str,
    created_by: int,
    data: EndpointInput,
    allow_private: bool,
) -> WebhookEndpoint:
    """A new active endpoint with a fresh secret (the caller shows `secret` once)."""
    check_url(data.url, allow_private)
    endpoint = WebhookEndpoint(
        tenant_id=tenant_id,
        url=data.url,
        types=list(data.types),
        description=data.description,
        secret=new_secret(),
        created_by=created_by,
        status=EndpointStatus.ACTIVE,
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def tenant_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    """The tenant's endpoint `endpoint_id`, or None."""
    if len(endpoint_id) != ULID_LENGTH or not (endpoint_id.isascii() and endpoint_id.isalnum()):
        return None  # not an id tally makes (and a NUL would be a database error)
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    return endpoint if endpoint is not None and endpoint.tenant_id == tenant_id else None


def list_endpoints(session: Session, tenant_id: str) -> list[WebhookEndpoint]:
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
    )


def change_endpoint(
    session: Session, endpoint: WebhookEndpoint, data: EndpointChange, allow_private: bool
) -> None:
    """Apply a PATCH. Enabling an endpoint clears why it was disabled and its failing time."""
    if data.url is not None:
        check_url(data.url, allow_private)
        endpoint.url = data.url
    if data.types is not None:
        endpoint.types = list(data.types)
    if data.description is not None:
        endpoint.description = data.description
    if data.status is not None and data.status != endpoint.status:
        endpoint.status = data.status
        endpoint.failing_since = None
        endpoint.disabled_reason = (
            "disabled by an administrator" if data.status == "disabled" else None
        )
    endpoint.updated_at = session.scalar(select(func.now()))  # type: ignore[assignment]
    session.flush()


def rotate_secret(session: Session, endpoint: WebhookEndpoint, overlap_hours: float) -> str:
    """Give the endpoint a new secret; the current one still signs for `overlap_hours`."""
    now = session.scalar(select(func.now()))
    assert now is not None
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_until = now + timedelta(hours=overlap_hours)
    endpoint.secret = new_secret()
    endpoint.updated_at = now
    session.flush()
    return endpoint.secret


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, and the previous one during
    the overlap after a rotation."""
    found = [endpoint.secret]
    until = endpoint.previous_secret_until
    if endpoint.previous_secret and until is not None and until > now:
        found.append(endpoint.previous_secret)
    return found


# The fan-out and the deliveries due

# An account's queue is its pending deliveries in event order (tenant-wide events make
# one queue of their own). Every pending delivery of a queue has the same next attempt
# time: while its head waits for a retry, the whole queue waits with it. So "due"
# (next_attempt_at <= now) is a plain condition on each row, and the due deliveries of a
# queue are always a prefix of it. A delivery added to a waiting queue waits as long:
# until the queue's latest time, one entry of its index (migration 0016; the index ended
# in event_id before, and this read the whole queue for each delivery added).
QUEUE_WAITS_UNTIL = """
    GREATEST(now(), COALESCE((
        SELECT max(q.next_attempt_at) FROM webhook_deliveries q
        WHERE q.endpoint_id = {endpoint} AND q.status = 'pending'
          AND COALESCE(q.account_id, '') = COALESCE({account}, '')), now()))
"""

FAN_OUT = text(f"""
    INSERT INTO webhook_deliveries (endpoint_id, event_id, account_id, next_attempt_at)
    SELECT w.id, e.id, e.account_id,
           {QUEUE_WAITS_UNTIL.format(endpoint="w.id", account="e.account_id")}
    FROM events e
    JOIN webhook_endpoints w ON w.tenant_id = e.tenant_id
    WHERE e.id > :after AND e.id <= :upto
      AND w.status = 'active'
      AND (cardinality(w.types) = 0 OR e.type = ANY(w.types))
    ORDER BY e.id
    ON CONFLICT (endpoint_id, event_id) DO NOTHING
""")


def fan_out(session: Session) -> int:
    """Write a pending delivery of each numbered event past the cursor for each active
    endpoint of its tenant that wants its type; move the cursor (in the caller's
    transaction). How many deliveries were written."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FAN_OUT_LOCK})
    after = cursor_position(session, WEBHOOKS_CURSOR)
    # Every id up to the largest visible one is visible (the sequencer's order).
    upto = int(session.scalar(text("SELECT COALESCE(max(id), 0) FROM events")) or 0)
    if upto <= after:
        return 0
    written = session.execute(FAN_OUT, {"after": after, "upto": upto})
    advance_cursor(session, WEBHOOKS_CURSOR, upto)
    return int(written.rowcount)  # type: ignore[attr-defined]


ENDPOINTS_DUE = text("""
    SELECT w.id FROM webhook_endpoints w
    WHERE w.status = 'active' AND EXISTS (
        SELECT 1 FROM webhook_deliveries d
        WHERE d.endpoint_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now())
    ORDER BY w.id
""")


def endpoints_due(session: Session) -> list[str]:
    """The active endpoints with a delivery due now."""
    return sorted(session.scalars(ENDPOINTS_DUE))


def queue_deliveries(
    redis: Redis, keys: RedisKeys, endpoint_ids: Sequence[str], send: Callable[[str], None]
) -> list[str]:
    """Send a delivery task for each endpoint that has none queued or running (its mark);
    the endpoints sent for."""
    sent = []
    for endpoint_id in endpoint_ids:
        if redis.set(keys.webhook_mark(endpoint_id), 1, nx=True, ex=MARK_SECONDS):
            send(endpoint_id)
            sent.append(endpoint_id)
    return sent


def requeue_delivery(
    redis: Redis, keys: RedisKeys, endpoint_id: str, send: Callable[[str], None]
) -> None:
    """A delivery task hands over to its successor: the mark stays, renewed."""
    redis.set(keys.webhook_mark(endpoint_id), 1, ex=MARK_SECONDS)
    send(endpoint_id)


def delivery_finished(redis: Redis, keys: RedisKeys, endpoint_id: str) -> None:
    """Nothing more is due: the next pump may send a task for the endpoint again."""
    redis.delete(keys.webhook_mark(endpoint_id))


# Redelivery and the log

REDELIVER = text(f"""
    INSERT INTO webhook_deliveries (endpoint_id, event_id, account_id, next_attempt_at)
    SELECT w.id, e.id, e.account_id,
           {QUEUE_WAITS_UNTIL.format(endpoint="w.id", account="e.account_id")}
    FROM events e
    JOIN webhook_endpoints w ON w.id = :endpoint AND w.tenant_id = e.tenant_id
    WHERE e.id BETWEEN :first AND :last
      AND (cardinality(w.types) = 0 OR e.type = ANY(w.types))
    ORDER BY e.id
    ON CONFLICT (endpoint_id, event_id) DO UPDATE
    SET status = 'pending', attempts = 0, next_attempt_at = EXCLUDED.next_attempt_at,
        first_attempt_at = NULL, delivered_at = NULL
""")


def redeliver(session: Session, endpoint: WebhookEndpoint, first: int, last: int) -> int:
    """Put the endpoint's events with ids first..last (those of its types) back to pending
    with their attempts reset, creating the deliveries that are missing; how many."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FAN_OUT_LOCK})
    result = session.execute(REDELIVER, {"endpoint": endpoint.id, "first": first, "last": last})
    return int(result.rowcount)  # type: ignore[attr-defined]


def prune_deliveries(session: Session) -> int:
    """Delete the delivered and failed deliveries whose events retention has deleted (the
    log keeps a delivery as long as its event); pending ones fail when next tried."""
    deleted = session.execute(
        text("""
            DELETE FROM webhook_deliveries d
            WHERE d.status <> 'pending'
              AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)
        """)
    )
    return int(deleted.rowcount)  # type: ignore[attr-defined]


def event_exists(session: Session, tenant_id: str, event_id: int) -> bool:
    return bool(
        session.scalar(
            text("SELECT EXISTS (SELECT 1 FROM events WHERE id = :id AND tenant_id = :tenant)"),
            {"id": event_id, "tenant": tenant_id},
        )
    )


def deliveries_page(
    session: Session,
    endpoint_id: str,
    after: int,
    limit: int,
    status: str | None = None,
) -> tuple[list[WebhookDelivery], bool]:
    """The endpoint's deliveries with event ids past `after`, in event order; whether more
    follow."""
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.event_id > after)
        .order_by(WebhookDelivery.event_id)
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


def endpoint_document(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as the API and the CLI show it (never its secrets)."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "types": list(endpoint.types),
        "description": endpoint.description,
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": format_timestamp(endpoint.failing_since),
        "previous_secret_until": format_timestamp(endpoint.previous_secret_until),
        "created_at": format_timestamp(endpoint.created_at),
        "updated_at": format_timestamp(endpoint.updated_at),
    }


def delivery_document(delivery: WebhookDelivery) -> dict[str, Any]:
    """One line of the delivery log."""
    return {
        "event_id": delivery.event_id,
        "account_id": delivery.account_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_latency_ms": delivery.last_latency_ms,
        "last_error": delivery.last_error,
        "first_attempt_at": format_timestamp(delivery.first_attempt_at),
        "last_attempt_at": format_timestamp(delivery.last_attempt_at),
        "next_attempt_at": format_timestamp(delivery.next_attempt_at),
        "delivered_at": format_timestamp(delivery.delivered_at),
        "created_at": format_timestamp(delivery.created_at),
    }


def _parse_after(value: Any) -> Any:
    number = parse_integer(value)
    return 0 if number is None else number


class DeliveriesQuery(BaseModel):
    """GET /api/v2/webhooks/{id}/deliveries: the log past `after`, optionally by status."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    after: Annotated[int, Field(ge=0, le=BIGINT_MAX), BeforeValidator(_parse_after)] = 0
    limit: Limit = DEFAULT_LIMIT
    status: Literal["pending", "delivered", "failed"] | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _blank_status(cls, value: Any) -> Any:
        return None if is_blank(value) else value
