"""shared.intake.validation: the bodies tally accepts and the rules across their fields.

Each refusal is an InvalidInput naming the field and a code; these tests call the
validators directly (no app, no database).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.intake.validation import (
    FieldError,
    InvalidInput,
    ScoreCommand,
    UserRef,
    check_amount,
    validate_capture,
    validate_hold,
    validate_idempotency_key,
    validate_points,
    validate_score,
    validate_user,
)

MAX = 1000


def refused(validate: Any, *args: Any) -> list[tuple[str, str]]:
    """(field, code) of each error `validate` raises (it must raise InvalidInput)."""
    with pytest.raises(InvalidInput) as raised:
        validate(*args)
    return [(error.field, error.code) for error in raised.value.errors]


# check_amount


@pytest.mark.parametrize(
    ("amount", "codes"),
    [
        (None, ["required"]),
        (0, ["zero"]),
        (1, []),
        (-1, []),
        (MAX, []),
        (-MAX, []),
        (MAX + 1, ["out_of_range"]),
        (-MAX - 1, ["out_of_range"]),
        (2**63, ["out_of_range"]),
    ],
)
def test_check_amount_bounds(amount: int | None, codes: list[str]) -> None:
    errors = check_amount("score", amount, MAX)
    assert [e.code for e in errors] == codes
    assert all(e.field == "score" for e in errors)


def test_check_amount_names_the_bounds() -> None:
    assert check_amount("amount", MAX + 1, MAX) == [
        FieldError("amount", "out_of_range", f"must be between -{MAX} and {MAX}")
    ]


# validate_score (POST /api/v2/score/)


def test_a_score_body_by_id_by_username_and_by_seed_001_user() -> None:
    assert validate_score({"user_id": 7, "score": 3, "comment": "c"}, MAX) == ScoreCommand(
        UserRef("user_id", user_id=7), 3, "", "c"
    )
    by_name = validate_score({"username": "ann", "score": -2, "reputation_context": "a|b"}, MAX)
    assert by_name == ScoreCommand(UserRef("username", username="ann"), -2, "a|b", "")
    assert validate_score({"user": "9", "score": "4", "comment": "c"}, MAX).user == UserRef(
        "user", user_id=9
    )


@pytest.mark.parametrize("score", [MAX, -MAX, str(MAX), f"-{MAX}"])
def test_a_score_at_the_maximum_is_accepted(score: Any) -> None:
    assert abs(validate_score({"user_id": 1, "score": score, "comment": "c"}, MAX).amount) == MAX


@pytest.mark.parametrize(
    ("score", "code"),
    [
        (0, "zero"),
        ("0", "zero"),
        ("-0", "zero"),
        (MAX + 1, "out_of_range"),
        (str(-MAX - 1), "out_of_range"),
        ("1" * 41, "out_of_range"),  # refused before int() spends time on it
        (True, "integer"),  # a JSON boolean is not an integer
        (False, "integer"),
        (1.0, "integer"),
        ("1.0", "integer"),
        ("+5", "integer"),
        (" 5", "integer"),
        ("5 ", "integer"),
        ("\u0663", "integer"),  # ARABIC-INDIC DIGIT THREE: digits, but not ASCII
        ("1e3", "integer"),
        ([], "integer"),
        (None, "required"),
        ("", "required"),  # blank is absent
        ("   ", "required"),
    ],
)
def test_a_bad_score_is_named(score: Any, code: str) -> None:
    assert refused(validate_score, {"user_id": 1, "score": score, "comment": "c"}, MAX) == [
        ("score", code)
    ]


def test_strings_of_digits_are_integers() -> None:
    command = validate_score({"user_id": "0012", "score": "-0007", "comment": "c"}, MAX)
    assert (command.user.user_id, command.amount) == (12, -7)


def test_every_bad_field_is_named_at_once() -> None:
    assert refused(validate_score, {}, MAX) == [
        ("user_id", "required"),
        ("score", "required"),
        ("reputation_context", "required"),
    ]


@pytest.mark.parametrize(
    "users",
    [{"user_id": 1, "username": "a"}, {"user_id": 1, "user": 1}, {"username": "a", "user": 2}],
)
def test_two_user_references_are_a_conflict_on_both(users: dict[str, Any]) -> None:
    errors = refused(validate_score, users | {"score": 1, "comment": "c"}, MAX)
    assert errors == [
        (name, "conflict") for name in ("user_id", "username", "user") if name in users
    ]


@pytest.mark.parametrize("blank", ["", " ", "\t\n", None])
def test_a_blank_user_reference_is_absent(blank: Any) -> None:
    body = {"user_id": blank, "username": blank, "score": 1, "comment": "c"}
    assert refused(validate_score, body, MAX) == [("user_id", "required")]


def test_a_blank_comment_and_no_context_is_refused() -> None:
    body = {"user_id": 1, "score": 1, "comment": "  ", "reputation_context": ""}
    assert refused(validate_score, body, MAX) == [("reputation_context", "required")]


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("comment", "a\x00b", "invalid_character"),
        ("comment", "\ud800", "invalid_character"),  # an unpaired surrogate
        ("comment", "x" * 2001, "too_long"),
        ("comment", 5, "string"),
        ("reputation_context", "a||b", "empty_segment"),
        ("reputation_context", "a|", "empty_segment"),
        ("reputation_context", "a\x00", "invalid_character"),
        ("reputation_context", "x" * 256, "too_long"),
        ("reputation_context", ["a"], "string"),
        ("username", "u\x00", "invalid_character"),
        ("username", "u" * 151, "too_long"),
    ],
)
def test_bad_text_is_named(field: str, value: Any, code: str) -> None:
    body = {"user_id": 1, "score": 1, "comment": "c"} | {field: value}
    if field == "username":
        del body["user_id"]
    assert (field, code) in refused(validate_score, body, MAX)


def test_text_at_its_limits_is_kept_and_contexts_are_trimmed_per_segment() -> None:
    command = validate_score(
        {"user_id": 1, "score": 1, "comment": "x" * 2000, "reputation_context": " a | b |c "}, MAX
    )
    assert command.comment == "x" * 2000 and command.reputation_context == "a|b|c"
    # A comment is stored verbatim, surrounding spaces included.
    assert validate_score({"user_id": 1, "score": 1, "comment": " c "}, MAX).comment == " c "


# validate_points (POST /admin/points/{id}/adjust)


def test_a_points_body_with_every_field() -> None:
    data = validate_points(
        {
            "amount": "25",
            "reason": "bonus",
            "points_type": "points",
            "idempotency_key": "k-1",
            "expires_at": "2030-01-01T10:00:00+02:00",
            "source": "shop",
            "related_id": "order-1",
            "allow_negative_balance": "TRUE",
        },
        MAX,
    )
    assert data.amount == 25 and data.allow_negative_balance is True
    assert data.expires_at == datetime(2030, 1, 1, 8, tzinfo=UTC)
    assert (data.reason, data.points_type, data.source, data.related_id) == (
        "bonus",
        "points",
        "shop",
        "order-1",
    )


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, [("amount", "required")]),
        ({"amount": 0}, [("amount", "zero")]),
        ({"amount": MAX + 1}, [("amount", "out_of_range")]),
        ({"amount": True}, [("amount", "integer")]),
        ({"amount": 1, "allow_negative_balance": "yes"}, [("allow_negative_balance", "boolean")]),
        ({"amount": 1, "allow_negative_balance": 2}, [("allow_negative_balance", "boolean")]),
        ({"amount": 1, "expires_at": "tomorrow"}, [("expires_at", "datetime")]),
        ({"amount": -1, "expires_at": "2030-01-01"}, [("expires_at", "only_positive")]),
        ({"amount": 1, "idempotency_key": "é"}, [("idempotency_key", "invalid")]),
        ({"amount": 1, "reason": "r\x00"}, [("reason", "invalid_character")]),
    ],
)
def test_a_bad_points_body_is_named(body: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    assert refused(validate_points, body, MAX) == errors


def test_blank_optional_points_fields_are_absent() -> None:
    data = validate_points(
        {"amount": -3, "reason": "", "idempotency_key": "  ", "allow_negative_balance": ""}, MAX
    )
    assert (data.reason, data.idempotency_key, data.allow_negative_balance) == (None, None, False)


# validate_hold and validate_capture


@pytest.mark.parametrize(
    ("amount", "code"),
    [(None, "required"), (0, "not_positive"), (-1, "not_positive"), (MAX + 1, "out_of_range")],
)
def test_a_hold_needs_a_positive_amount(amount: Any, code: str) -> None:
    assert refused(validate_hold, {"amount": amount}, MAX) == [("amount", code)]


def test_a_hold_within_bounds_and_its_timeout_as_given() -> None:
    # A past timeout passes here: check_future refuses it only for a new hold.
    data = validate_hold({"amount": MAX, "expires_at": "2000-01-01"}, MAX)
    assert data.amount == MAX and data.expires_at == datetime(2000, 1, 1, tzinfo=UTC)


def test_a_capture_takes_no_amount_or_a_positive_one() -> None:
    assert validate_capture({}, MAX).amount is None
    assert validate_capture({"amount": "1"}, MAX).amount == 1
    assert validate_capture({"amount": MAX}, MAX).amount == MAX
    assert refused(validate_capture, {"amount": 0}, MAX) == [("amount", "not_positive")]
    assert refused(validate_capture, {"amount": -5}, MAX) == [("amount", "not_positive")]
    assert refused(validate_capture, {"amount": MAX + 1}, MAX) == [("amount", "out_of_range")]


# validate_idempotency_key


@pytest.mark.parametrize("key", ["k", "a b", "~!@#$%^&*()", "x" * 255])
def test_printable_ascii_keys_of_1_to_255_characters(key: str) -> None:
    assert validate_idempotency_key(key) == key


def test_an_absent_key_is_none() -> None:
    assert validate_idempotency_key(None) is None


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("", "invalid"),
        ("x" * 256, "invalid"),
        ("é", "invalid"),
        ("a\tb", "invalid"),
        ("a\x00", "invalid"),
        ("a\n", "invalid"),
        (5, "string"),
        (True, "string"),
    ],
)
def test_a_bad_key_is_named_by_where_it_came_from(key: Any, code: str) -> None:
    assert refused(validate_idempotency_key, key) == [("Idempotency-Key", code)]
    assert refused(validate_idempotency_key, key, "items[3].idempotency_key") == [
        ("items[3].idempotency_key", code)
    ]


# validate_user


def test_a_user_needs_a_username_and_a_known_role() -> None:
    assert validate_user({"username": "ann", "role": "admin"}).role == "admin"
    assert validate_user({"username": "ann"}).role is None  # the default: user
    assert refused(validate_user, {"role": "root"}) == [
        ("username", "required"),
        ("role", "unknown"),
    ]
    assert refused(validate_user, {"username": "  "}) == [("username", "required")]
