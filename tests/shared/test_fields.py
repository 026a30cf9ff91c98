"""shared.fields: one parser per kind of field, shared by bodies, queries, headers and CSV."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic_core import PydanticCustomError

from shared.fields import (
    BIGINT_MAX,
    format_timestamp,
    integer_within,
    is_blank,
    parse_context,
    parse_flag,
    parse_integer,
    parse_key,
    parse_text,
    parse_timestamp,
)


def code_of(parse: Any, value: Any) -> str:
    with pytest.raises(PydanticCustomError) as raised:
        parse(value)
    return raised.value.type


@pytest.mark.parametrize("value", [None, "", " ", "\t\r\n"])
def test_blank_is_absent_for_every_parser(value: Any) -> None:
    assert is_blank(value)
    assert parse_integer(value) is None
    assert parse_text(value, 10) is None
    assert parse_context(value) is None
    assert parse_flag(value) is False
    assert parse_timestamp(value) is None


def test_zero_and_false_are_not_blank() -> None:
    assert not is_blank(0) and not is_blank(False) and not is_blank("0")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(5, 5), (-5, -5), ("5", 5), ("-5", -5), ("007", 7), (str(BIGINT_MAX), BIGINT_MAX)],
)
def test_integers_from_json_or_digit_strings(value: Any, parsed: int) -> None:
    assert parse_integer(value) == parsed


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (True, "integer"),
        (1.5, "integer"),
        ("1_000", "integer"),
        ("0x10", "integer"),
        ("--1", "integer"),
        ("\uff11", "integer"),  # FULLWIDTH DIGIT ONE
        ("9" * 41, "out_of_range"),
    ],
)
def test_anything_else_is_not_an_integer(value: Any, code: str) -> None:
    assert code_of(parse_integer, value) == code


def test_integer_within_checks_the_range_after_parsing() -> None:
    parse = integer_within(1, 10)
    assert parse("10") == 10 and parse(None) is None
    assert code_of(parse, "11") == "out_of_range"
    assert code_of(parse, 0) == "out_of_range"
    assert code_of(parse, "x") == "integer"


def test_text_is_kept_verbatim_up_to_its_limit() -> None:
    assert parse_text(" a b ", 5) == " a b "
    assert code_of(lambda v: parse_text(v, 5), "abcdef") == "too_long"
    assert code_of(lambda v: parse_text(v, 5), "a\x00") == "invalid_character"
    assert code_of(lambda v: parse_text(v, 5), 5) == "string"


def test_contexts_are_trimmed_per_segment_and_refuse_empty_ones() -> None:
    assert parse_context(" contest | first_place |apis") == "contest|first_place|apis"
    assert parse_context("single") == "single"
    for bad in ("|a", "a|", "a| |b"):
        assert code_of(parse_context, bad) == "empty_segment"
    # The limit applies to the trimmed context.
    assert parse_context("a" * 255 + "   ") == "a" * 255
    assert code_of(parse_context, "a" * 256) == "too_long"


@pytest.mark.parametrize(
    ("value", "flag"),
    [(True, True), (False, False), ("true", True), (" TRUE ", True), ("1", True), ("False", False),
     ("0", False)],
)  # fmt: skip
def test_flags(value: Any, flag: bool) -> None:
    assert parse_flag(value) is flag


@pytest.mark.parametrize("value", [1, 0, "yes", "on", "t", []])
def test_other_flags_are_refused(value: Any) -> None:
    assert code_of(parse_flag, value) == "boolean"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("2026-05-20", datetime(2026, 5, 20, tzinfo=UTC)),
        ("2026-05-20T10:30:00Z", datetime(2026, 5, 20, 10, 30, tzinfo=UTC)),
        ("2026-05-20T10:30:00", datetime(2026, 5, 20, 10, 30, tzinfo=UTC)),  # naive is UTC
        (" 2026-05-20T10:30:00+02:00 ", datetime(2026, 5, 20, 8, 30, tzinfo=UTC)),
        (date(2026, 1, 2), datetime(2026, 1, 2, tzinfo=UTC)),
    ],
)
def test_timestamps_come_back_in_utc(value: Any, parsed: datetime) -> None:
    result = parse_timestamp(value)
    assert result == parsed and result.tzinfo is UTC


@pytest.mark.parametrize(
    "value", ["tomorrow", "2026-13-01", 1700000000, "0001-01-01T00:00:00+01:00"]
)
def test_bad_timestamps_are_refused(value: Any) -> None:
    assert code_of(parse_timestamp, value) == "datetime"


def test_timestamps_are_written_in_utc_with_a_z() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 1, 1, 12, tzinfo=plus_two)) == "2026-01-01T10:00:00Z"
    assert format_timestamp(None) is None


def test_keys_are_not_trimmed_and_not_blank_tolerant() -> None:
    assert parse_key(" k ") == " k "
    assert parse_key(None) is None
    assert code_of(parse_key, "") == "invalid"
    assert code_of(parse_key, "\x7f") == "invalid"
