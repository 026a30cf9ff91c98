"""Idempotency: a stable fingerprint of a parsed adjustment, compared on key reuse."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


class IdempotencyConflict(Exception):
    """The key was already used for a different adjustment (answered 422)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with a different body")
        self.key = key


def fingerprint(values: Sequence[Any]) -> str:
    """SHA-256 of the canonical JSON of a parsed adjustment's values, in field order.

    It is taken over what was parsed, not the bytes sent, so the same adjustment
    sent as JSON, as a form or in a batch has the same fingerprint.
    """
    canonical = json.dumps(list(values), separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
