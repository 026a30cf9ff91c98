"""Query parameters of the read routes: one pydantic model per route, errors named by parameter."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from shared.fields import (
    BIGINT_MAX,
    Context,
    Flag,
    Search,
    ShortText,
    Timestamp,
    Username,
    integer_within,
    is_blank,
    parse_integer,
)

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
# Column ranges: a value outside would be a database error, not a 400.
INTEGER_MAX = 2**31 - 1
Ordering = Literal["-reputed_at", "reputed_at", "-score", "score"]
PeriodName = Literal["day", "week", "month", "quarter", "year", "all"]
Ranking = Literal["row_number", "rank", "dense_rank"]
DEFAULT_ORDERING: Ordering = "-reputed_at"


def _parse_limit(value: Any) -> Any:
    """Absent means the default; above the cap means the cap, as DRF's LimitOffsetPagination."""
    number = parse_integer(value)
    if number is None:
        return DEFAULT_LIMIT
    return min(number, MAX_LIMIT)


def _parse_offset(value: Any) -> Any:
    number = parse_integer(value)
    return 0 if number is None else number


def _default_ordering(value: Any) -> Any:
    return DEFAULT_ORDERING if is_blank(value) else value


# Field before the validator, so that the JSON schema shows `minimum`/`maximum`.
Limit = Annotated[
    int,
    Field(ge=1, description=f"page size; default {DEFAULT_LIMIT}, capped at {MAX_LIMIT}"),
    BeforeValidator(_parse_limit),
]
Offset = Annotated[int, Field(ge=0, le=BIGINT_MAX), BeforeValidator(_parse_offset)]
BigIntegerId = Annotated[int | None, BeforeValidator(integer_within(-BIGINT_MAX - 1, BIGINT_MAX))]
IntegerId = Annotated[int | None, BeforeValidator(integer_within(-INTEGER_MAX - 1, INTEGER_MAX))]
ScoreOrdering = Annotated[Ordering, BeforeValidator(_default_ordering)]


class PageQuery(BaseModel):
    """`limit` and `offset` of a DRF-style page."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0


SearchText = Annotated[
    Search, Field(description="case-insensitive substring of the comment or the context")
]
ContextPrefix = Annotated[
    Context, Field(description="whole leading segments: `a|b` matches `a|b|c`, not `a|bc`")
]


class EntryFilters(PageQuery):
    """Filters on ledger entries shared by the score list and the leaderboard."""

    user_id: BigIntegerId = None
    search: SearchText = None


class ScoreListQuery(EntryFilters):
    """GET /api/v2/score/: the community API's list of Score objects."""

    username: Username = None
    reputation_context: ContextPrefix = None
    created_after: Timestamp = None
    created_before: Timestamp = None
    ordering: ScoreOrdering = DEFAULT_ORDERING


class UserListQuery(PageQuery):
    """GET /api/v2/users/: the tenant's users in id order; `username` or `external_id` finds one."""

    username: Username = None
    external_id: ShortText = None


class BoardQuery(BaseModel):
    """What board: the entries that count (all but the page and the user)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    search: SearchText = None
    reputation_type: IntegerId = None
    reputation_context: ContextPrefix = None
    reputed_at_from: Timestamp = None
    reputed_at_to: Timestamp = None
    exclude_manual: Flag = False
    exclude_reset: Flag = False
    period: Annotated[
        PeriodName,
        Field(
            description="the day, ISO week (from Monday), month, quarter or year that `at`"
            " falls in, in the tenant's time zone; `all`: all time"
        ),
    ] = "all"
    at: Annotated[Timestamp, Field(description="a moment in the period wanted; default: now")] = (
        None
    )
    ranking: Annotated[
        Ranking,
        Field(
            description="`row_number` (1, 2, 3 by total, then user id), `rank` (ties share"
            " a rank, then a gap: 1, 1, 3) or `dense_rank` (1, 1, 2)"
        ),
    ] = "row_number"


class LeaderboardQuery(BoardQuery, EntryFilters):
    """GET /api/v2/score/leaderboard/: totals per user over the entries that pass."""


class OwnRankQuery(BoardQuery):
    """GET /api/v2/score/leaderboard/me: one user's place on a board (the caller's)."""

    user_id: BigIntegerId = None


After = Annotated[
    int,
    Field(ge=0, le=BIGINT_MAX, description="resume after this id (the last one read)"),
    BeforeValidator(_parse_offset),
]
From = Annotated[
    Timestamp,
    Field(alias="from", description="first moment included (ISO 8601); default: the beginning"),
]
To = Annotated[Timestamp, Field(description="first moment excluded (ISO 8601); default: now")]


class AsOfQuery(BaseModel):
    """`as_of` on the balance reads: the figures as they were at that moment."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    as_of: Annotated[
        Timestamp,
        Field(description="the account as it stood then: after every entry made at or before it"),
    ] = None


class StatementQuery(BaseModel):
    """GET .../statement: an account over [from, to), its entries paged by cursor."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    from_: From = None
    to: To = None
    after: After = 0
    limit: Limit = DEFAULT_LIMIT


class PointsStatementQuery(StatementQuery):
    """Seed 002's statement: of the account of `points_type` (the routes' default)."""

    points_type: ShortText = None


class ExportQuery(BaseModel):
    """GET /api/v2/export: a tenant's entries or requests, streamed."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    from_: From = None
    to: To = None
    after: After = 0
    format: Annotated[
        Literal["ndjson", "csv"], Field(description="NDJSON (one object a line) or CSV")
    ] = "ndjson"
    kind: Annotated[
        Literal["entries", "requests"],
        Field(description="ledger entries, or the adjustment requests (with their outcome)"),
    ] = "entries"
