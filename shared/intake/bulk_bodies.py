"""Reading a bulk body: CSV rows, JSON items and NDJSON lines, counted as they are read.

A body is never parsed whole: items come out one at a time, and reading stops at the
item past the batch limit (`at_most`), so a body of millions of items costs what its
first limit + 1 cost. The batch's validation and storage are shared.intake.bulk's.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import ijson

from shared.intake.validation import BulkItemInput, FieldError, InvalidInput

CSV_COLUMNS = ("username", "user_id", "variation_points", "context", "comment")


@dataclass(frozen=True)
class ItemError:
    """A bad item: `position` is the CSV row number or the bulk item's index."""

    position: int
    field: str
    code: str
    message: str


class BatchInvalid(Exception):
    """Some items are bad: nothing is written; carries every error found."""

    def __init__(self, errors: list[ItemError]) -> None:
        super().__init__(f"{len(errors)} invalid items")
        self.errors = errors


def csv_lines(stream: TextIO) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) of each row of a CSV text that holds data; blank rows skipped.

    Read strictly: a text that is not CSV (say, a field past the csv module's size limit,
    a quote left open, which would otherwise take every row after it into one field, or
    text after a closing quote) raises BatchInvalid naming the row where reading stopped.
    """
    number = 0
    try:
        for number, cells in enumerate(csv.reader(stream, strict=True), start=1):
            if any(cell.strip() for cell in cells):
                yield number, cells
    except csv.Error as error:
        raise BatchInvalid(
            [ItemError(number + 1, "row", "csv", f"not readable as CSV: {error}")]
        ) from None


def csv_records(stream: TextIO) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) of each row of a community import file that holds data, its
    header row (if any) skipped; see csv_lines."""
    for number, cells in csv_lines(stream):
        if number == 1 and [c.strip().lower() for c in cells] == list(CSV_COLUMNS):
            continue
        yield number, cells


def csv_rows(stream: TextIO) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, row by column name) of a community import file."""
    for number, cells in csv_records(stream):
        row = dict(zip(CSV_COLUMNS, cells, strict=False))
        if len(cells) != len(CSV_COLUMNS):
            row["__columns__"] = str(len(cells))
        yield number, row


T = TypeVar("T")


def at_most(items: Iterable[T], limit: int, field: str) -> Iterator[T]:
    """The items; InvalidInput naming `field` at the one past `limit`, reading none after it."""
    for count, item in enumerate(items, start=1):
        if count > limit:
            raise InvalidInput([FieldError(field, "too_many", f"at most {limit} items per batch")])
        yield item


# ijson's C backend, pinned (its pure-Python one is four times slower on a bulk body), with
# its own number parsing (use_float): its arbitrary-precision path crashes the process on
# an integer longer than Python's 4,300 digits. So an integer past 64 bits is invalid JSON
# here, where no field would take it anyway.
JSON_PARSER = ijson.get_backend("yajl2_c")
OPENS = frozenset({"start_map", "start_array"})
CLOSES = frozenset({"end_map", "end_array"})
# The bulk body's members that are defaults for its items.
DEFAULT_FIELDS = ("reputation_context", "comment")
ITEM_FIELDS = frozenset(BulkItemInput.model_fields)

# The escape of a UTF-16 surrogate. The parser makes a pair one character, but a lone high
# half "?" and a lone low half an error: lone halves are found first, so that text is kept
# verbatim or refused, as shared.fields does with every text.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")

Event = tuple[str, Any]
Reader = Callable[[str, Any, Iterator[Event]], Any]


def json_events(data: bytes, field: str = "body") -> Iterator[Event]:
    """The parser's events over `data`; InvalidInput naming `field` where it is not JSON."""
    if _lone_surrogate(data):
        message = "must not contain unpaired surrogates"
        raise InvalidInput([FieldError(field, "invalid_character", message)])
    try:
        yield from JSON_PARSER.basic_parse(data, use_float=True)
    except ijson.JSONError:
        raise InvalidInput([FieldError(field, "invalid_json", "not valid JSON")]) from None


def _lone_surrogate(data: bytes) -> bool:
    """Whether `data` escapes half of a UTF-16 surrogate pair without the other half."""
    low_at = -1  # where the low half must start, after a high half
    for match in SURROGATE_ESCAPE.finditer(data):
        start = match.start()
        if _backslashes_before(data, start) % 2:
            continue  # an escaped backslash, then the letters "uD8..": not an escape
        if match[0][3] in b"89abAB":  # a high half
            if low_at >= 0:
                return True  # after a high half
            low_at = match.end()
        elif start != low_at:
            return True  # a low half, not right after a high half
        else:
            low_at = -1
    return low_at >= 0


def _backslashes_before(data: bytes, end: int) -> int:
    start = end
    while start > 0 and data[start - 1] == ord("\\"):
        start -= 1
    return end - start


def _value(event: str, value: Any, events: Iterator[Event]) -> Any:
    """The value that starts with this event, read one level deep: an object or array comes
    back empty, its content skipped, never built. No field of a bulk body takes one, and its
    kind alone decides the error, so nesting in a body costs no memory."""
    if event not in OPENS:
        return value
    depth = 1
    for inner, _ in events:
        depth += (inner in OPENS) - (inner in CLOSES)
        if depth == 0:
            break
    return {} if event == "start_map" else []


def _item(event: str, value: Any, events: Iterator[Event]) -> Any:
    """One item: of an object, the fields an item has (validation ignores any other), each
    read as `_value` reads it; anything else as `_value` reads it."""
    if event != "start_map":
        return _value(event, value, events)
    return _members_named(events, ITEM_FIELDS)


def _members_named(events: Iterator[Event], names: Collection[str]) -> dict[str, Any]:
    """The members in `names` of the object being read (its start read already), each read
    as `_value` reads it; the others are read past."""
    found: dict[str, Any] = {}
    for event, key in events:
        if event == "end_map":
            break
        member = _value(*next(events), events)
        if key in names:
            found[key] = member
    return found


def _elements(events: Iterator[Event], read: Reader) -> Iterator[Any]:
    """Each element of the array being read, as `read` reads it."""
    for event, value in events:
        if event == "end_array":
            return
        yield read(event, value, events)


def _end(events: Iterator[Event]) -> None:
    """Read past the document's value: the parser refuses anything there but whitespace."""
    for _ in events:
        pass


def json_batch(data: bytes, limit: int) -> tuple[dict[str, Any], Iterator[tuple[int, Any]]]:
    """The defaults and the (index, item)s of a bulk JSON body, `{"items": [...], ...}`.

    The body is read twice and never built whole: first to check it (JSON, an object
    whose `items` is an array of at most `limit` items, reading none past the first too
    many) and to find the defaults, which may follow the items; then, as the caller
    validates them, the items one at a time. InvalidInput names what is wrong.
    """
    events = json_events(data)
    event, value = next(events)
    if event == "start_map":
        defaults, member = _members(events, limit)
    else:
        _value(event, value, events)
        defaults, member = {}, 0
    _end(events)
    if not member:
        raise InvalidInput([FieldError("items", "required", 'the body must be {"items": [...]}')])
    return defaults, _json_items(data, member)


def _members(events: Iterator[Event], limit: int) -> tuple[dict[str, Any], int]:
    """The defaults among the object's members, and which `items` member holds the items
    (the last, as json.loads keeps; 0 if that is not an array), counting them on the way."""
    defaults: dict[str, Any] = {}
    member = seen = 0
    for event, key in events:
        if event == "end_map":
            break
        event, value = next(events)
        if key == "items":
            seen += 1
            member = seen if event == "start_array" else 0
        if key == "items" and member:
            for _ in at_most(_elements(events, _value), limit, "items"):
                pass  # counted, not kept
            continue
        found = _value(event, value, events)
        if key in DEFAULT_FIELDS:
            defaults[key] = found
    return defaults, member


def _json_items(data: bytes, member: int) -> Iterator[tuple[int, Any]]:
    """The (index, item)s of the `member`th `items` member of a checked body."""
    events = json_events(data)
    next(events)  # the object's start
    for _, key in events:
        event, value = next(events)
        if key == "items":
            member -= 1
            if member == 0:
                yield from enumerate(_elements(events, _item))
                return
        _value(event, value, events)


def json_fields(data: bytes, names: Iterable[str]) -> dict[str, Any]:
    """The named members of a JSON object body (a form sent as JSON), each read as `_value`
    reads it; InvalidInput if the body is not JSON or not an object."""
    events = json_events(data)
    event, value = next(events)
    if event != "start_map":
        _value(event, value, events)
        _end(events)
        raise InvalidInput([FieldError("body", "invalid_type", "the body must be a JSON object")])
    fields = _members_named(events, set(names))
    _end(events)
    return fields


def ndjson_items(data: bytes, limit: int) -> Iterator[tuple[int, Any]]:
    """The (index, item)s of an NDJSON body, one JSON text a line, blank lines skipped, each
    read as the caller validates it; InvalidInput naming a line that is not JSON, or at
    the item past `limit`."""
    lines = ((n, line) for n, line in enumerate(io.BytesIO(data), start=1) if line.strip())
    for index, (number, line) in enumerate(at_most(lines, limit, "items")):
        events = json_events(line, f"line {number}")
        item = _item(*next(events), events)
        _end(events)
        yield index, item
