"""shared.intake.bulk's body readers: JSON and NDJSON items read one at a time, within the limit.

No database and no Flask: the readers take the body's bytes and the item limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.intake.bulk_bodies import at_most, json_batch, json_fields, ndjson_items
from shared.intake.validation import FieldError, InvalidInput

# The JSON parser reads 64 KiB at a time: garbage further on is past what it has read.
PAST_A_READ = b" " * 100_000


def batch(body: bytes, limit: int = 100) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    """The defaults and every item of a JSON body."""
    defaults, items = json_batch(body, limit)
    return defaults, list(items)


def refused(read: Callable[[], object]) -> FieldError:
    """The one error with which `read` refuses its body."""
    with pytest.raises(InvalidInput) as raised:
        read()
    [error] = raised.value.errors
    return error


def test_at_most_reads_one_item_past_the_limit_and_no_more() -> None:
    read: list[int] = []

    def items() -> Iterator[int]:
        for n in range(1_000_000):
            read.append(n)
            yield n

    with pytest.raises(InvalidInput) as raised:
        list(at_most(items(), 10, "items"))
    assert raised.value.errors == [FieldError("items", "too_many", "at most 10 items per batch")]
    assert len(read) == 11
    assert list(at_most(iter(range(10)), 10, "items")) == list(range(10))


def test_json_items_come_with_their_index_and_the_defaults_that_follow_them() -> None:
    body = {"items": [{"user_id": 1, "score": 2}, {"username": "ann", "score": -1.5}],
            "comment": "spring", "reputation_context": "contest|a", "other": [1]}  # fmt: skip
    assert batch(json.dumps(body).encode()) == (
        {"comment": "spring", "reputation_context": "contest|a"},
        [(0, {"user_id": 1, "score": 2}), (1, {"username": "ann", "score": -1.5})],
    )


def test_json_items_past_the_limit_are_refused_before_the_rest_is_read() -> None:
    body = b'{"items": [{}, {}, {},' + PAST_A_READ + b"not JSON at all"
    error = refused(lambda: batch(body, 2))
    assert (error.field, error.code) == ("items", "too_many")
    # Within the limit, the same garbage is read, and refused.
    assert refused(lambda: batch(body, 3)).code == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [b'{"items": [{}]', b'{"items": [{}]} {}', b'{"items": [{}], "comment": x}', b"", b"[1,"],
)
def test_a_body_that_is_not_json_is_refused_as_such(body: bytes) -> None:
    error = refused(lambda: batch(body))
    assert (error.field, error.code) == ("body", "invalid_json")


@pytest.mark.parametrize(
    "body", [b"[{}]", b'{"items": {}}', b'{"comment": "x"}', b'{"items": [], "items": 5}', b"7"]
)
def test_a_body_without_an_array_of_items_is_refused(body: bytes) -> None:
    error = refused(lambda: batch(body))
    assert (error.field, error.code) == ("items", "required")


def test_the_last_items_member_holds_the_items_as_json_loads_keeps() -> None:
    body = b'{"items": [{"score": 1}], "items": 5, "items": [{"score": 2}, {"score": 3}]}'
    assert batch(body)[1] == [(0, {"score": 2}), (1, {"score": 3})]
    assert batch(b'{"items": [{"score": 1}, {}], "items": []}')[1] == []
    # Each `items` member is held to the limit.
    assert refused(lambda: batch(b'{"items": [1, 2, 3], "items": [1]}', 2)).code == "too_many"


def test_nested_values_come_back_empty_and_unknown_fields_are_dropped() -> None:
    deep = b"[" * 1_000_000 + b"]" * 1_000_000
    body = (b'{"items": [{"user_id": {"id": [1, 2]}, "comment": [[1], {}], "junk": ' + deep
            + b', "score": 1}, [1, [2]], ' + deep + b', "text"], "comment": {"a": 1}}')  # fmt: skip
    assert batch(body) == (
        {"comment": {}},
        [(0, {"user_id": {}, "comment": [], "score": 1}), (1, []), (2, []), (3, "text")],
    )


@pytest.mark.parametrize("number", [b"9" * 5000, b"-" + b"9" * 4301, str(2**64).encode()])
@pytest.mark.parametrize("before", [b"", b'{"comment": "' + b"x" * 70_000 + b'"}, '])
def test_an_integer_past_64_bits_is_invalid_json_and_never_crashes(
    number: bytes, before: bytes
) -> None:
    # ijson's own big-integer path takes the process down past 4,300 digits, in a later
    # read of the body too.
    body = b'{"items": [' + before + b'{"score": ' + number + b"}]}"
    assert refused(lambda: batch(body)).code == "invalid_json"


def test_ndjson_items_skip_blank_lines_and_count_as_items() -> None:
    body = b'{"score": 1}\n\n  \r\n{"score": 2, "x": [1]}\r\n[3]\n'
    assert list(ndjson_items(body, 10)) == [(0, {"score": 1}), (1, {"score": 2}), (2, [])]


@pytest.mark.parametrize("line", [b'{"score": ', b"{} {}", b"NaN"])
def test_an_ndjson_line_that_is_not_json_is_named(line: bytes) -> None:
    error = refused(lambda: list(ndjson_items(b'{"score": 1}\n\n' + line + b"\n{}", 10)))
    assert (error.field, error.code) == ("line 3", "invalid_json")


def test_ndjson_lines_past_the_limit_are_refused_before_the_rest_is_read() -> None:
    body = b"{}\n\n{}\n{}\nnot JSON at all\n" * 1000
    error = refused(lambda: list(ndjson_items(body, 2)))
    assert (error.field, error.code) == ("items", "too_many")


def test_json_fields_reads_only_the_named_members_one_level_deep() -> None:
    body = b'{"csv_string": "a,b", "dry_run": [true], "pad": [' + b"{}," * 1000 + b"{}]}"
    assert json_fields(body, ("csv_string", "dry_run")) == {"csv_string": "a,b", "dry_run": []}
    assert refused(lambda: json_fields(b'["csv_string"]', ["csv_string"])).code == "invalid_type"
    assert refused(lambda: json_fields(b'["csv_string"', ["csv_string"])).code == "invalid_json"


@pytest.mark.parametrize(
    "text", [rb"\ud83d", rb"a\udc00", rb"\ud83d\ud83d\ude00", rb"\ude00\ud83d", rb"\\\ud800"]
)
def test_an_unpaired_surrogate_is_refused_not_kept_as_a_question_mark(text: bytes) -> None:
    error = refused(lambda: batch(b'{"items": [{"comment": "' + text + b'"}]}'))
    assert (error.field, error.code) == ("body", "invalid_character")
    error = refused(lambda: list(ndjson_items(b'{}\n{"comment": "' + text + b'"}', 10)))
    assert (error.field, error.code) == ("line 2", "invalid_character")


def test_surrogate_pairs_and_escaped_backslashes_are_text() -> None:
    body = rb'{"items": [{"comment": "\ud83d\ude00 \\ud800 \\\ud83d\ude00"}]}'
    assert batch(body)[1] == [(0, {"comment": "\U0001f600 \\ud800 \\\U0001f600"})]
