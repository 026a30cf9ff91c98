"""tally's headers that are Structured Fields (RFC 9651), read and written with `http_sfv`:
Idempotency-Key (draft-ietf-httpapi-idempotency-key-header) and RateLimit, RateLimit-Policy
(draft-ietf-httpapi-ratelimit-headers)."""

from __future__ import annotations

import secrets
from functools import cache

from flask import request
from http_sfv.item import Item


def idempotency_key_header() -> str | None:
    """The request's Idempotency-Key: the content of a Structured Field string (`"k-1"` is
    the key `k-1`), or, as most clients send it, the bare value as it is."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    field = Item()
    try:
        field.parse(raw.encode())
    except ValueError:
        return raw
    return field.value if type(field.value) is str else raw


def new_idempotency_key() -> str:
    """A key for a request that came without one, returned in its answer for its retries."""
    return "tally-" + secrets.token_hex(16)


def idempotency_key_field(key: str) -> str:
    """`key` as the Structured Field string of an answer's Idempotency-Key."""
    return str(Item(key))


def rate_limit_fields(
    policy: str, quota: int, window: int, remaining: int, reset: int
) -> dict[str, str]:
    """The RateLimit and RateLimit-Policy fields: `policy` allows `quota` requests per
    `window` seconds; `remaining` are left, for `reset` more seconds."""
    state = Item(policy)
    state.params["r"] = max(remaining, 0)
    state.params["t"] = max(reset, 0)
    return {"RateLimit-Policy": _policy_field(policy, quota, window), "RateLimit": str(state)}


@cache
def _policy_field(policy: str, quota: int, window: int) -> str:
    """A policy's RateLimit-Policy value: the same on every answer, so written once."""
    described = Item(policy)
    described.params["q"] = quota
    described.params["w"] = window
    return str(described)
