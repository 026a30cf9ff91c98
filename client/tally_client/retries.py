"""When to retry a call and how long to wait first: Retry-After, else backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

# Answers that say "not now": a limit, or a server or proxy that is down for the moment.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# No answer, or a broken one: the request may or may not have reached the server.
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Retries:
    """How one logical call retries: at most `attempts` tries, none begun after `deadline` s.

    Every try of a call sends the same idempotency key, so a retry can never
    create a second adjustment. Between tries the client waits what Retry-After
    says, else `backoff` seconds doubled per try up to `max_backoff`, with jitter.
    `Retries(attempts=1)` turns retrying off. A call's first retry is logged at
    WARNING (logger `tally_client`) with the time it may still take: a caller's thread
    is never held without a word.
    """

    attempts: int = 10
    deadline: float = 15.0
    backoff: float = 0.25
    max_backoff: float = 8.0


def retry_delay(
    reply: httpx.Response | BaseException, tries: int, retries: Retries
) -> float | None:
    """Seconds to wait before trying again after `tries` tries, or None if `reply` is final."""
    if isinstance(reply, httpx.Response):
        if reply.status_code not in RETRY_STATUSES:
            return None
        announced = parse_retry_after(reply.headers.get("Retry-After"))
        if announced is not None:
            return announced
    elif not isinstance(reply, TRANSIENT_ERRORS):
        return None
    return backoff(tries, retries)


def backoff(tries: int, retries: Retries) -> float:
    """Exponential backoff with jitter: between half and all of the doubled delay."""
    ceiling = min(retries.max_backoff, retries.backoff * 2.0 ** max(tries - 1, 0))
    return ceiling * (0.5 + random.random() / 2)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delay-seconds or an HTTP date (RFC 9110); None if bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an obsolete date form without a zone means GMT
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())
