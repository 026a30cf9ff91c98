"""Query parameters of the read routes: one pydantic model per route, errors named by parameter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from shared.validation import BIGINT_MAX, Context, Search, Username, parse_integer

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
# Column ranges: a value outside would be a database error, not a 400.
INTEGER_MAX = 2**31 - 1
Ordering = Literal["-reputed_at", "reputed_at", "-score", "score"]
DEFAULT_ORDERING: Ordering = "-reputed_at"
FLAG_VALUES = {"true": True, "1": True, "false": False, "0": False}


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_limit(value: Any) -> Any:
    """Absent means the default; above the cap means the cap, as DRF's LimitOffsetPagination."""
    number = parse_integer(value)
    if number is None:
        return DEFAULT_LIMIT
    return min(number, MAX_LIMIT)


def _parse_offset(value: Any) -> Any:
    number = parse_integer(value)
    return 0 if number is None else number


def _integer_within(low: int, high: int) -> BeforeValidator:
    """An integer parameter compared with a column of this range."""

    def parse(value: Any) -> int | None:
        number = parse_integer(value)
        if number is not None and not low <= number <= high:
            raise PydanticCustomError(
                "out_of_range", "must be between {low} and {high}", {"low": low, "high": high}
            )
        return number

    return BeforeValidator(parse)


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 date or date-time (or a datetime); one without an offset is UTC."""
    if _is_blank(value):
        return None
    try:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str):
            parsed = datetime.fromisoformat(value)
        else:
            raise ValueError(value)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        # In UTC, because Python accepts offsets up to a day and PostgreSQL refuses some.
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise PydanticCustomError(
            "datetime", "must be an ISO 8601 date-time such as 2026-05-20T10:30:00Z"
        ) from None


def parse_flag(value: Any) -> bool:
    """`true` or `false` (also `1`/`0`, any case); absent is false."""
    if _is_blank(value):
        return False
    if isinstance(value, bool):
        return value
    flag = FLAG_VALUES.get(value.strip().lower()) if isinstance(value, str) else None
    if flag is None:
        raise PydanticCustomError("boolean", "must be true or false")
    return flag


def _default_ordering(value: Any) -> Any:
    return DEFAULT_ORDERING if _is_blank(value) else value


# Field before the validator, so that the JSON schema shows `minimum`/`maximum`.
Limit = Annotated[
    int,
    Field(ge=1, description=f"page size; default {DEFAULT_LIMIT}, capped at {MAX_LIMIT}"),
    BeforeValidator(_parse_limit),
]
Offset = Annotated[int, Field(ge=0, le=BIGINT_MAX), BeforeValidator(_parse_offset)]
BigIntegerId = Annotated[int | None, _integer_within(-BIGINT_MAX - 1, BIGINT_MAX)]
IntegerId = Annotated[int | None, _integer_within(-INTEGER_MAX - 1, INTEGER_MAX)]
Timestamp = Annotated[datetime | None, BeforeValidator(parse_timestamp)]
Flag = Annotated[bool, BeforeValidator(parse_flag)]
ScoreOrdering = Annotated[Ordering, BeforeValidator(_default_ordering)]


class PageQuery(BaseModel):
    """`limit` and `offset` of a DRF-style page."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0


class EntryFilters(PageQuery):
    """Filters on ledger entries shared by the score list and the leaderboard."""

    user_id: BigIntegerId = None
    search: Annotated[
        Search, Field(description="case-insensitive substring of the comment or the context")
    ] = None


class ScoreListQuery(EntryFilters):
    """GET /api/v2/score/: the community API's list of Score objects."""

    username: Username = None
    reputation_context: Annotated[
        Context, Field(description="whole leading segments: `a|b` matches `a|b|c`, not `a|bc`")
    ] = None
    created_after: Timestamp = None
    created_before: Timestamp = None
    ordering: ScoreOrdering = DEFAULT_ORDERING


class LeaderboardQuery(EntryFilters):
    """GET /api/v2/score/leaderboard/: totals per user over the entries that pass."""

    reputation_type: IntegerId = None
    reputed_at_from: Timestamp = None
    reputed_at_to: Timestamp = None
    exclude_manual: Flag = False
    exclude_reset: Flag = False
