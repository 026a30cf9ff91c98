"""Checking a tally webhook: the Standard Webhooks signature (HMAC-SHA256), with the
standard library only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60


class WebhookVerificationError(Exception):
    """The webhook is not tally's: a header missing, a stale timestamp, or no signature
    that matches. Answer it with a 4xx and do not act on it."""


def _secret_key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError:
        raise WebhookVerificationError("the secret is not whsec_<base64>") from None


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | bytes,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """The event of a webhook `body` if its headers carry a valid signature by `secret`
    (the endpoint's `whsec_...`); else WebhookVerificationError.

    Pass the body exactly as received (bytes), before any JSON parsing. The timestamp
    must be within `tolerance` seconds of now; any one of the space-separated `v1,`
    signatures may match (during a secret rotation tally signs with both secrets).
    Deduplicate by `webhook-id` (the event's id): a webhook may come more than once.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise WebhookVerificationError(
            "webhook-id, webhook-timestamp and webhook-signature are required"
        )
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a Unix time") from None
    if abs((time.time() if now is None else now) - sent_at) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or too new")
    data = body if isinstance(body, bytes) else body.encode()
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + data
    expected = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    for candidate in signatures.split(" "):
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(expected, given):
            event: dict[str, Any] = json.loads(data)
            return event
    raise WebhookVerificationError("no signature matches the secret")
