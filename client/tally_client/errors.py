"""Typed exceptions: one class per problem type the tally API answers, built from its response."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from tally_client.retries import parse_retry_after

if TYPE_CHECKING:
    from tally_client.models import RequestStatus

PROBLEM_TYPE_BASE = "https://tally.dev/problems/"


@dataclass(frozen=True)
class FieldError:
    """One input at fault: its field, a code, why; `position` is a bulk index or a CSV row."""

    field: str
    code: str
    message: str
    position: int | None = None


class TallyError(Exception):
    """Base of every client error: the HTTP status, problem type, detail and fields at fault.

    `status` and `response` are None when no answer came (Unreachable, WaitTimeout);
    `retry_after` is the answer's Retry-After in seconds, if it had one (429, 503);
    `x_request_id` the answer's X-Request-ID, under which the server logged the call
    (quote it to its operator). `str(error)` names the status, the detail, every field
    at fault and that id.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        problem_type: str | None = None,
        errors: Sequence[FieldError] = (),
        body: Mapping[str, Any] | None = None,
        response: httpx.Response | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.x_request_id = None if response is None else response.headers.get("X-Request-ID")
        text = detail if status is None else f"{status}: {detail}"
        if errors:
            text += " (" + "; ".join(f"{e.field}: {e.message}" for e in errors) + ")"
        if self.x_request_id:
            text += f" [X-Request-ID {self.x_request_id}]"
        super().__init__(text)
        self.detail = detail
        self.status = status
        self.problem_type = problem_type
        self.errors = list(errors)
        self.body: dict[str, Any] = dict(body or {})
        self.response = response
        self.retry_after = retry_after

    @property
    def slug(self) -> str | None:
        """The problem type's last segment (`validation`, `not-found`, ...), if it is tally's."""
        if self.problem_type and self.problem_type.startswith(PROBLEM_TYPE_BASE):
            return self.problem_type.removeprefix(PROBLEM_TYPE_BASE)
        return None


class ValidationError(TallyError):
    """400: the request has invalid fields (`errors` names each) or an unknown user."""


class Unauthorized(TallyError):
    """401: no token, or one that is invalid, expired or revoked."""


class Forbidden(TallyError):
    """403: the token's role may not do this."""


class NotFound(TallyError):
    """404: no such user, request or batch (in the token's tenant)."""


class Conflict(TallyError):
    """409 `conflict`: the thing to create exists already (users)."""


class Rejected(TallyError):
    """409: the adjustment was recorded but refused because of the account's state.

    `reason` is the rejection code (`insufficient_balance`, `account_frozen`);
    `request_id` the stored request, whose status URL keeps the outcome.
    """

    def __init__(
        self, detail: str, *, reason: str | None, request_id: int | None, **parts: Any
    ) -> None:
        parts.setdefault("status", 409)
        super().__init__(detail, **parts)
        self.reason = reason
        self.request_id = request_id

    @classmethod
    def from_status(cls, status: RequestStatus) -> Rejected:
        """The rejection of a request learned from its status object (no 409 answer)."""
        return cls(
            status.error_message or "the adjustment was rejected",
            reason=status.error_code,
            request_id=status.id,
            body=status.body,
        )


class ContentTooLarge(TallyError):
    """413: the body is over the route's limit."""


class UnsupportedMediaType(TallyError):
    """415: the route does not take this content type."""


class KeyReused(TallyError):
    """422: the idempotency key was used before with a different body."""


class RateLimited(TallyError):
    """429: too many requests; `retry_after` says for how long, in seconds."""


class ServerError(TallyError):
    """5xx: the server failed."""


class Unavailable(ServerError):
    """502, 503 or 504: the API, its database or a proxy is down for now; retry later."""


class Unreachable(TallyError):
    """No answer: connection refused or reset, or a timeout, on every attempt."""


class WaitTimeout(TallyError):
    """The deadline passed while a request or batch was still pending; `last` is its status."""

    def __init__(self, detail: str, last: Any) -> None:
        super().__init__(detail)
        self.last = last


BY_SLUG: dict[str, type[TallyError]] = {
    "validation": ValidationError,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not-found": NotFound,
    "conflict": Conflict,
    "content-too-large": ContentTooLarge,
    "unsupported-media-type": UnsupportedMediaType,
    "idempotency-key-reused": KeyReused,
    "too-many-requests": RateLimited,
    "unavailable": Unavailable,
    "not-ready": Unavailable,
}
# The seed 002 routes answer in an envelope without a type; proxies answer anything.
BY_STATUS: dict[int, type[TallyError]] = {
    400: ValidationError,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Rejected,  # on the adjustment routes every other 409 slug is a rejection code
    413: ContentTooLarge,
    415: UnsupportedMediaType,
    422: KeyReused,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_for(response: httpx.Response) -> TallyError:
    """The typed exception for an error answer, problem+json or seed 002's envelope."""
    status = response.status_code
    body = _json_object(response)
    problem_type = body.get("type") if isinstance(body.get("type"), str) else None
    slug = problem_type.removeprefix(PROBLEM_TYPE_BASE) if problem_type else None
    kind = BY_SLUG.get(slug or "") or BY_STATUS.get(status)
    if kind is None:
        kind = ServerError if status >= 500 else TallyError
    detail = body.get("detail") or body.get("message") or response.reason_phrase or str(status)
    parts: dict[str, Any] = {
        "status": status,
        "problem_type": problem_type,
        "errors": _field_errors(body),
        "body": body,
        "response": response,
        "retry_after": parse_retry_after(response.headers.get("Retry-After")),
    }
    if kind is Rejected:
        # The rejection code: a problem's `code`; an envelope's `reason` (its `code` is the
        # status).
        code = body.get("code") if isinstance(body.get("code"), str) else body.get("reason")
        return Rejected(
            str(detail),
            reason=code if isinstance(code, str) else None,
            request_id=_request_id(body, response),
            **parts,
        )
    return kind(str(detail), **parts)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:200]} if response.text.strip() else {}
    return body if isinstance(body, dict) else {}


def _field_errors(body: Mapping[str, Any]) -> list[FieldError]:
    """`errors_by_item` of the bulk route (with indexes), else `errors` (with CSV row numbers)."""
    listed = body.get("errors_by_item") or body.get("errors") or []
    if not isinstance(listed, list):
        return []
    return [
        FieldError(
            field=str(item.get("field", "")),
            code=str(item.get("code", "")),
            message=str(item.get("message", "")),
            position=_position(item),
        )
        for item in listed
        if isinstance(item, dict)
    ]


def _position(item: Mapping[str, Any]) -> int | None:
    position = item.get("index", item.get("row_number"))
    return position if isinstance(position, int) else None


def _request_id(body: Mapping[str, Any], response: httpx.Response) -> int | None:
    if isinstance(body.get("request_id"), int):
        return int(body["request_id"])
    return request_id_from_location(response.headers.get("Location"))


def request_id_from_location(location: str | None) -> int | None:
    """The id at the end of a request status URL (`.../requests/42`)."""
    tail = (location or "").rstrip("/").rsplit("/", 1)[-1]
    return int(tail) if tail.isascii() and tail.isdigit() else None
