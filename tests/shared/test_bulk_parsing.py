"""shared.intake.bulk's parsing: CSV records and rows, item validation, item keys, batch digests.

No database: user resolution is in test_users.py. Rows are numbered as the file's
records (a quoted field may span lines), starting at 1 with the header.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from shared.intake.bulk import (
    Award,
    batch_fingerprint,
    collect,
    duplicate_keys,
    item_keys,
    validate_bulk_item,
    validate_csv_row,
)
from shared.intake.bulk_bodies import CSV_COLUMNS, BatchInvalid, ItemError, csv_records, csv_rows

MAX = 1000
HEADER = "username,user_id,variation_points,context,comment\n"


def records(text: str) -> list[tuple[int, list[str]]]:
    return list(csv_records(io.StringIO(text)))


def unreadable(text: str) -> list[ItemError]:
    with pytest.raises(BatchInvalid) as raised:
        list(csv_records(io.StringIO(text)))
    return raised.value.errors


def test_the_header_and_blank_rows_are_skipped_and_rows_keep_their_numbers() -> None:
    text = HEADER + "ann,,5,a|b,hi\n\n , ,\nbob,3,-2,c,\n"
    assert records(text) == [(2, ["ann", "", "5", "a|b", "hi"]), (5, ["bob", "3", "-2", "c", ""])]


def test_the_header_is_recognised_in_any_case_and_spacing_on_the_first_row_only() -> None:
    assert records(" USERNAME , User_Id,variation_points,context,comment\nann,,5,a,\n") == [
        (2, ["ann", "", "5", "a", ""])
    ]
    # Elsewhere it is a row (whose variation_points then fails validation).
    assert records("ann,,5,a,\n" + HEADER)[1][0] == 2
    # Without a header the first row is data.
    assert records("ann,,5,a,\n") == [(1, ["ann", "", "5", "a", ""])]


def test_a_quoted_field_may_hold_commas_quotes_and_newlines() -> None:
    text = 'ann,,5,a,"one, ""two""\nthree"\r\nbob,,1,c,\r\n'
    assert records(text) == [
        (1, ["ann", "", "5", "a", 'one, "two"\nthree']),
        (2, ["bob", "", "1", "c", ""]),
    ]


def test_a_field_past_the_csv_limit_names_the_row_where_reading_stopped() -> None:
    text = "ann,,5,a,ok\nbob,,1,c," + "x" * (csv.field_size_limit() + 1) + "\n"
    [error] = unreadable(text)
    assert (error.position, error.field, error.code) == (2, "row", "csv")


def test_an_unterminated_quote_is_refused_not_swallowing_the_rows_after_it() -> None:
    # Read leniently, bob's row would become part of ann's comment and vanish unseen.
    [error] = unreadable('ann,,5,a,"oops\nbob,,3,c,x\n')
    assert (error.position, error.field, error.code) == (1, "row", "csv")


def test_text_after_a_closing_quote_is_refused() -> None:
    [error] = unreadable('ann,,5,a,ok\nbob,,1,c,"x"y\n')
    assert (error.position, error.code) == (2, "csv")


def test_rows_by_column_name_mark_a_wrong_column_count() -> None:
    rows = list(csv_rows(io.StringIO("ann,,5,a,hi\nann,,5,a,hi,extra\nann,,5\n")))
    assert rows[0] == (1, dict(zip(CSV_COLUMNS, ["ann", "", "5", "a", "hi"], strict=True)))
    assert rows[1][1]["__columns__"] == "6" and rows[2][1]["__columns__"] == "3"


def row(**cells: str) -> dict[str, str]:
    return dict.fromkeys(CSV_COLUMNS, "") | cells


def csv_errors(number: int, cells: dict[str, str]) -> list[tuple[int, str, str]]:
    with pytest.raises(BatchInvalid) as raised:
        validate_csv_row(number, cells, MAX)
    return [(e.position, e.field, e.code) for e in raised.value.errors]


def test_a_good_row_becomes_an_award() -> None:
    award = validate_csv_row(7, row(username="ann", variation_points="-5", context=" a | b "), MAX)
    assert award == Award(7, None, "ann", -5, "a|b", "")
    both = validate_csv_row(
        8, row(username="ann", user_id="4", variation_points="1", context="c"), MAX
    )
    assert (both.user_id, both.username) == (4, "ann")  # resolution checks they agree


def test_a_bad_row_is_named_by_its_number_and_the_file_s_column_names() -> None:
    assert csv_errors(3, row(variation_points="0")) == [
        (3, "user_id", "required"),
        (3, "variation_points", "zero"),
        (3, "context", "required"),
    ]
    assert csv_errors(4, row(username="a", user_id="x", variation_points="1", context="c")) == [
        (4, "user_id", "integer")
    ]
    assert csv_errors(5, row(username="a", variation_points=str(MAX + 1), context="c")) == [
        (5, "variation_points", "out_of_range")
    ]
    assert csv_errors(6, row(username="a", variation_points="1", context="a||b")) == [
        (6, "context", "empty_segment")
    ]
    assert csv_errors(9, row(username="a") | {"__columns__": "6"}) == [(9, "row", "columns")]


def test_a_comment_alone_does_not_make_a_csv_row_valid() -> None:
    # Unlike the single route, the import needs a context.
    assert csv_errors(2, row(username="a", variation_points="1", comment="c")) == [
        (2, "context", "required")
    ]


def bulk_errors(index: int, item: Any, defaults: dict[str, Any] | None = None) -> list[tuple]:
    with pytest.raises(BatchInvalid) as raised:
        validate_bulk_item(index, item, defaults or {}, MAX)
    return [(e.position, e.field, e.code) for e in raised.value.errors]


def test_bulk_items_take_the_batch_defaults_unless_they_say_otherwise() -> None:
    defaults = {"reputation_context": "dflt", "comment": None}
    assert validate_bulk_item(0, {"user_id": 1, "score": 2}, defaults, MAX) == Award(
        0, 1, None, 2, "dflt", ""
    )
    own = {"username": "ann", "score": "3", "reputation_context": "own", "idempotency_key": "k"}
    assert validate_bulk_item(1, own, defaults, MAX) == Award(1, None, "ann", 3, "own", "", "k")


def test_a_bad_bulk_item_is_named_by_its_index() -> None:
    assert bulk_errors(2, [1]) == [(2, "item", "invalid_type")]
    assert bulk_errors(3, {"user_id": 1, "score": 0, "comment": "c"}) == [(3, "score", "zero")]
    # A blank item key would silently take the batch's: refused.
    assert bulk_errors(4, {"user_id": 1, "score": 1, "comment": "c", "idempotency_key": ""}) == [
        (4, "idempotency_key", "invalid")
    ]
    assert bulk_errors(5, {"user_id": 1, "username": "a", "score": 1, "comment": "c"}) == [
        (5, "user_id", "conflict"),
        (5, "username", "conflict"),
    ]


def test_collect_keeps_the_good_and_every_error() -> None:
    items = [(0, {"user_id": 1, "score": 1}), (1, "x"), (2, {"user_id": 2, "score": 0})]
    valid, errors = collect(
        items, lambda i, item: validate_bulk_item(i, item, {"comment": "c"}, MAX)
    )
    assert [a.position for a in valid] == [0]
    assert [(e.position, e.code) for e in errors] == [(1, "invalid_type"), (2, "zero")]


def awards(*keys: str | None) -> list[Award]:
    return [Award(n, n, None, 1, "c", "", key) for n, key in enumerate(keys, start=1)]


def test_items_without_a_key_take_the_batch_key_and_their_position() -> None:
    assert item_keys(awards(None, "own", None), "batch") == ["batch:1", "own", "batch:3"]


def test_both_items_of_a_shared_key_are_named() -> None:
    batch = awards("k", None, "k", "batch:2")
    errors = duplicate_keys(batch, item_keys(batch, "batch"))
    assert [(e.position, e.message) for e in errors] == [
        (1, "item 3 has the same key"),
        (2, "item 4 has the same key"),
        (3, "item 1 has the same key"),
        (4, "item 2 has the same key"),
    ]


def test_the_batch_digest_covers_every_item_in_order() -> None:
    batch = awards(None, "k")
    digest = batch_fingerprint(batch)
    assert batch_fingerprint(awards(None, "k")) == digest
    assert batch_fingerprint(batch[::-1]) != digest
    assert batch_fingerprint(awards(None, "j")) != digest
    changed = [batch[0], Award(2, 2, None, 2, "c", "", "k")]
    assert batch_fingerprint(changed) != digest
