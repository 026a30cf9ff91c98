"""One parser per kind of field, used by every body, query string, header and CSV row.

Each parser takes what the client sent (a JSON value or a string) and returns the
parsed value, None for an absent or blank one, or raises PydanticCustomError with
a code and a message; pydantic turns that into a field error. The Annotated types
at the bottom attach a parser and its JSON schema to a model field.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

CONTEXT_MAX = 255
COMMENT_MAX = 2000
USERNAME_MAX = 150
SHORT_TEXT_MAX = 255
# RFC 5321's longest address, and so the length of the users.email column: a longer one
# must be refused here, naming the field, not by the database.
EMAIL_MAX = 254
AVATAR_MAX = 2000
KEY_MAX = 255
CONTEXT_SEPARATOR = "|"
# Ids and amounts are BIGINT columns: a larger number names nothing and must not reach
# the database (each caller checks the range that matters to it).
BIGINT_MAX = 2**63 - 1
INTEGER_PATTERN = re.compile(r"-?[0-9]+")
# Longer digit strings are refused before int() spends time on them.
INTEGER_DIGITS_MAX = 40
FLAG_VALUES = {"true": True, "1": True, "false": False, "0": False}


def _error(code: str, message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError(code, message, context or None)


def is_blank(value: Any) -> bool:
    """Absent, or an empty or whitespace-only string: both count as absent."""
    return value is None or (isinstance(value, str) and not value.strip())


def parse_integer(value: Any) -> int | None:
    """A JSON integer or a string of ASCII digits with an optional minus; nothing else."""
    if is_blank(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _error("integer", "must be an integer")
    if isinstance(value, str):
        if not INTEGER_PATTERN.fullmatch(value):
            raise _error("integer", "must be an integer")
        if len(value) > INTEGER_DIGITS_MAX:
            raise _error("out_of_range", "is out of range")
        return int(value)
    return value


def _check_characters(value: str) -> str:
    if "\x00" in value:
        raise _error("invalid_character", "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _error("invalid_character", "must not contain unpaired surrogates") from None
    return value


def parse_text(value: Any, max_length: int) -> str | None:
    """A string of at most `max_length` characters, stored verbatim."""
    if is_blank(value):
        return None
    if not isinstance(value, str):
        raise _error("string", "must be a string")
    if len(value) > max_length:
        raise _error("too_long", "must be at most {max_length} characters", max_length=max_length)
    return _check_characters(value)


def parse_context(value: Any) -> str | None:
    """Pipe-separated segments, each trimmed, none empty: `contest|first_place|apis`."""
    if is_blank(value):
        return None
    if not isinstance(value, str):
        raise _error("string", "must be a string")
    return _parse_context_text(value)


# A batch names the same few contexts thousands of times: parse each once.
@functools.lru_cache(maxsize=1024)
def _parse_context_text(value: str) -> str:
    segments = [segment.strip() for segment in value.split(CONTEXT_SEPARATOR)]
    if any(not segment for segment in segments):
        raise _error("empty_segment", "must not contain empty segments")
    normalised = CONTEXT_SEPARATOR.join(segments)
    if len(normalised) > CONTEXT_MAX:
        raise _error("too_long", "must be at most {max_length} characters", max_length=CONTEXT_MAX)
    return _check_characters(normalised)


def parse_flag(value: Any) -> bool:
    """A JSON boolean, or `true`/`false`/`1`/`0` in any case; absent is false."""
    if is_blank(value):
        return False
    if isinstance(value, bool):
        return value
    flag = FLAG_VALUES.get(value.strip().lower()) if isinstance(value, str) else None
    if flag is None:
        raise _error("boolean", "must be true or false")
    return flag


def format_timestamp(value: datetime | None) -> str | None:
    """UTC, ISO 8601, with a `Z`: how every answer writes a time."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 date or date-time; one without an offset is UTC; returned in UTC."""
    if is_blank(value):
        return None
    message = "must be an ISO 8601 date-time such as 2026-05-20T10:30:00Z"
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _error("datetime", message) from None
    else:
        raise _error("datetime", message)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        # In UTC, because Python accepts offsets up to a day and PostgreSQL refuses some;
        # the shift can leave datetime's range (year 1 to 9999).
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _error("datetime", "must be between years 1 and 9999 in UTC") from None


def parse_key(value: Any) -> str | None:
    """An idempotency key: 1 to 255 printable ASCII characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _error("string", "must be a string")
    if not 1 <= len(value) <= KEY_MAX or not value.isprintable() or not value.isascii():
        raise _error("invalid", "must be 1 to {max_length} printable ASCII characters",
                     max_length=KEY_MAX)  # fmt: skip
    return value


def integer_within(low: int, high: int) -> Callable[[Any], int | None]:
    """parse_integer, then a range check (for values compared with a column of this range)."""

    def parse(value: Any) -> int | None:
        number = parse_integer(value)
        if number is not None and not low <= number <= high:
            raise _error("out_of_range", "must be between {low} and {high}", low=low, high=high)
        return number

    return parse


def text_parser(max_length: int) -> BeforeValidator:
    return BeforeValidator(lambda value: parse_text(value, max_length))


def _text_schema(max_length: int) -> WithJsonSchema:
    return WithJsonSchema({"type": ["string", "null"], "maxLength": max_length})


INTEGER_SCHEMA = {
    "anyOf": [
        {"type": "integer"},
        {"type": "string", "pattern": "^-?[0-9]+$"},
        {"type": "null"},
    ]
}
FLAG_SCHEMA = {
    "anyOf": [
        {"type": "boolean"},
        {"type": "string", "pattern": r"^\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)?\s*$"},
    ]
}

Integer = Annotated[int | None, BeforeValidator(parse_integer), WithJsonSchema(INTEGER_SCHEMA)]
Context = Annotated[
    str | None,
    BeforeValidator(parse_context),
    WithJsonSchema(
        {
            "type": ["string", "null"],
            "maxLength": CONTEXT_MAX,
            "description": "Pipe-separated segments, none empty: contest|first_place|apis",
        }
    ),
]
Comment = Annotated[str | None, text_parser(COMMENT_MAX), _text_schema(COMMENT_MAX)]
Username = Annotated[str | None, text_parser(USERNAME_MAX), _text_schema(USERNAME_MAX)]
ShortText = Annotated[str | None, text_parser(SHORT_TEXT_MAX), _text_schema(SHORT_TEXT_MAX)]
Email = Annotated[str | None, text_parser(EMAIL_MAX), _text_schema(EMAIL_MAX)]
Avatar = Annotated[str | None, text_parser(AVATAR_MAX), _text_schema(AVATAR_MAX)]
# A search longer than the longest field it looks in could never match.
Search = Annotated[str | None, text_parser(COMMENT_MAX), _text_schema(COMMENT_MAX)]
Flag = Annotated[bool, BeforeValidator(parse_flag), WithJsonSchema(FLAG_SCHEMA)]
Timestamp = Annotated[
    datetime | None,
    BeforeValidator(parse_timestamp),
    WithJsonSchema({"type": ["string", "null"], "format": "date-time"}),
]
KEY_SCHEMA = {
    "type": ["string", "null"], "minLength": 1, "maxLength": KEY_MAX, "pattern": "^[ -~]+$",
}  # fmt: skip
# In a body, a blank key counts as absent, like every other blank field.
IdempotencyKey = Annotated[
    str | None,
    BeforeValidator(lambda value: None if is_blank(value) else parse_key(value)),
    WithJsonSchema(KEY_SCHEMA),
]
# A bulk item's own key: absent, or a key (a blank one would silently take the batch's).
ItemKey = Annotated[str | None, BeforeValidator(parse_key), WithJsonSchema(KEY_SCHEMA)]
