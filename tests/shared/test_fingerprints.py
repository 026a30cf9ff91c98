"""Fingerprints: how a reused idempotency key is told to carry the same adjustment.

The digests of plain adjustments are stored in every request row; a change to them
would turn every retry of an older request into a 422, so two are pinned here (they
are what the code computed before the points operations existed, at 9d8bd09).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.intake.adjustments import FIELD_NAMES, Adjustment
from shared.intake.idempotency import fingerprint
from shared.intake.validation import validate_points, validate_score
from shared.models import Operation

SEED_000 = Adjustment(
    user_id=1,
    points_type="reputation",
    amount=10,
    reputation_context="contest|first_place|apis",
    comment="Winner of the APIS contest",
)
SEED_002 = Adjustment(
    user_id=2,
    points_type="points",
    amount=-25,
    reason="shop",
    source="store",
    related_id="order-9",
    expires_at=datetime(2030, 1, 1, tzinfo=UTC),
    allow_negative=True,
)


def test_the_digests_of_plain_adjustments_do_not_change() -> None:
    assert SEED_000.fingerprint() == (
        "3297b6b83ada2bce2eb1ef100817ad8b70f2ef7eea0cd647fac74a19f7e4e6a9"
    )
    assert SEED_002.fingerprint() == (
        "d871d4c802f0af3f94548e0618724ee55c666c71d7a76ea16917276f7a3ed08b"
    )


def test_the_digest_is_sha256_of_the_values_as_compact_json_in_field_order() -> None:
    values = ["reputation", 10, "contest|first_place|apis", "Winner of the APIS contest", "",
              "", "", None, False]  # fmt: skip
    canonical = json.dumps(values, separators=(",", ":")).encode()
    assert fingerprint(values) == hashlib.sha256(canonical).hexdigest() == SEED_000.fingerprint()
    assert FIELD_NAMES == (
        "points_type", "amount", "reputation_context", "comment", "reason", "source",
        "related_id", "expires_at", "allow_negative",
    )  # fmt: skip


def test_the_user_is_not_part_of_it() -> None:
    # The single route leaves the user to the accept statement; a batch item names it.
    assert dataclasses.replace(SEED_000, user_id=None).fingerprint() == SEED_000.fingerprint()
    assert dataclasses.replace(SEED_000, user_id=99).fingerprint() == SEED_000.fingerprint()


CHANGES: dict[str, Any] = {
    "points_type": "points",
    "amount": 11,
    "reputation_context": "contest|second_place",
    "comment": "Winner of the APIS contest ",
    "reason": "r",
    "source": "s",
    "related_id": "x",
    "expires_at": datetime(2030, 1, 1, tzinfo=UTC),
    "allow_negative": True,
}


@pytest.mark.parametrize("name", FIELD_NAMES)
def test_any_field_that_differs_changes_it(name: str) -> None:
    changed = dataclasses.replace(SEED_000, **{name: CHANGES[name]})
    assert changed.fingerprint() != SEED_000.fingerprint()


def test_the_operation_counts_only_when_it_is_not_a_plain_adjustment() -> None:
    explicit = dataclasses.replace(SEED_000, entry_type=Operation.ADJUST)
    assert explicit.fingerprint() == SEED_000.fingerprint()
    digests = {
        operation: dataclasses.replace(SEED_000, entry_type=operation).fingerprint()
        for operation in Operation
    }
    assert len(set(digests.values())) == len(Operation)
    assert digests[Operation.REVERSAL] == fingerprint(
        [getattr(SEED_000, name) for name in FIELD_NAMES] + ["reversal"]
    )


def score_adjustment(body: dict[str, Any]) -> Adjustment:
    """The adjustment POST /api/v2/score/ builds from a body (api.score)."""
    command = validate_score(body, 1000)
    return Adjustment(None, "reputation", command.amount, command.reputation_context,
                      command.comment)  # fmt: skip


@pytest.mark.parametrize(
    "form",
    [
        {"user": "7", "score": "3", "comment": "c", "reputation_context": "a|b"},
        {"user_id": "7", "score": "3", "comment": "c", "reputation_context": " a | b "},
        {"username": "ann", "score": "03", "comment": "c", "reputation_context": "a|b"},
    ],
)
def test_json_and_form_bodies_with_equal_values_agree(form: dict[str, Any]) -> None:
    as_json = {"user_id": 7, "score": 3, "comment": "c", "reputation_context": "a|b"}
    assert score_adjustment(form).fingerprint() == score_adjustment(as_json).fingerprint()


def test_an_expiry_is_compared_as_an_instant() -> None:
    def points(expires_at: str) -> Adjustment:
        data = validate_points({"amount": 5, "expires_at": expires_at}, 1000)
        return Adjustment(None, "points", 5, expires_at=data.expires_at)

    utc = points("2030-01-01T00:00:00Z").fingerprint()
    assert points("2030-01-01T02:00:00+02:00").fingerprint() == utc
    assert points("2030-01-01").fingerprint() == utc
    assert points("2030-01-01T00:00:01Z").fingerprint() != utc
