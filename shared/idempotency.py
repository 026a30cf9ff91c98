"""Idempotency: a stable fingerprint of a parsed adjustment, compared on key reuse."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


class IdempotencyConflict(Exception):
    """The key was already used for a different adjustment (answered 422)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with a different body")
        self.key = key


def fingerprint(adjustment: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the parsed adjustment, so JSON and form agree."""
    canonical = json.dumps(adjustment, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
