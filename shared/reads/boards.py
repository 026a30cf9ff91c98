"""Leaderboards: users ranked by their total over a period's entries, and one user's place.

Most boards are read from `period_totals`, which the applier keeps in the transaction
that writes the entries (docs/periods.md): the rows of one period are one range of an
index ordered by total, so a page reads only what it shows. Their sizes and ranks are
summed from `period_scores`, how many users stand at each score (in one or two kinds of
row: SCORE_KINDS), which the applier keeps in the same statement: a sum over the
period's distinct scores rather than a count of its rows, most of which writes keep
sending back to the table. A board that filters entries by their text (`search`,
`reputation_context`) or by an arbitrary time range sums the matching entries instead;
both give the same totals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    SQLColumnExpression,
    Subquery,
    cast,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from shared.models import (
    Account,
    LedgerEntry,
    Period,
    PeriodScore,
    PeriodTotal,
    ReputationType,
    User,
)
from shared.reads.ledger_reads import (
    account_of,
    context_matches,
    entry_conditions,
    made_within,
)
from shared.reads.query_params import BoardQuery, LeaderboardQuery, PageQuery, Ranking

# The first day of the all-time period.
ALL_TIME = date(1970, 1, 1)
PERIOD_LENGTHS = {
    Period.DAY: "1 day",
    Period.WEEK: "7 days",
    Period.MONTH: "1 month",
    Period.QUARTER: "3 months",
    Period.YEAR: "1 year",
}


@dataclass(frozen=True)
class Window:
    """A period of the tenant's calendar: its first day, and its bounds as moments."""

    period: Period
    starts: date
    begins: datetime | None
    ends: datetime | None


# The period `at` (default now) falls in, in the tenant's time zone: its first local
# moment, and its bounds as moments.
WINDOW = text("""
    SELECT local, local AT TIME ZONE zone AS begins,
           (local + CAST(:length AS interval)) AT TIME ZONE zone AS ends
    FROM (
        SELECT date_trunc(:period, COALESCE(CAST(:at AS timestamptz), now())
                                   AT TIME ZONE t.time_zone) AS local,
               t.time_zone AS zone
        FROM tenants t WHERE t.id = :tenant
    ) tenant
""")


def window(session: Session, tenant_id: str, period: str, at: datetime | None) -> Window:
    """The tenant's period of kind `period` that `at` (default: now) falls in."""
    kind = Period(period)
    if kind == Period.ALL:
        return Window(kind, ALL_TIME, None, None)
    row = session.execute(
        WINDOW,
        {"period": period, "at": at, "tenant": tenant_id, "length": PERIOD_LENGTHS[kind]},
    ).one()
    return Window(kind, row.local.date(), row.begins, row.ends)


class Kind(Enum):
    """Which entries a board counts: every one, the manual ones, the reversals, none."""

    ALL = "all"
    MANUAL = "manual"
    REVERSALS = "reversals"
    NONE = "none"


# The kinds of `period_scores` each board sums (migration 0014): a period total without
# reversals stands once, as `plain`, at the same score on the `all` and `manual` boards.
SCORE_KINDS = {
    Kind.ALL: ("plain", "all"),
    Kind.MANUAL: ("plain", "manual"),
    Kind.REVERSALS: ("reversals",),
}


def kind_of(query: BoardQuery) -> Kind:
    """The entries that count: reputation types and exclusions narrow {manual, reversals}."""
    manual, reversals = True, True
    if query.reputation_type is not None:
        manual &= query.reputation_type == ReputationType.MANUAL
        reversals &= query.reputation_type == ReputationType.REVERSAL
    manual &= not query.exclude_manual
    reversals &= not query.exclude_reset
    if manual and reversals:
        return Kind.ALL
    return Kind.MANUAL if manual else Kind.REVERSALS if reversals else Kind.NONE


def _from_entries(query: BoardQuery) -> bool:
    """Whether the board must sum entries: filters the period totals do not keep."""
    return (
        query.search is not None
        or query.reputation_context is not None
        or query.reputed_at_from is not None
        or query.reputed_at_to is not None
    )


@dataclass(frozen=True)
class Board:
    """A board's rows as a selectable: (user_id, score), one row per user on the board;
    for a board of period totals, also its places: (score, users), how many users stand
    at a score (one row per score and shard)."""

    rows: Select[Any, Any]
    score: SQLColumnExpression[Any]
    user_id: SQLColumnExpression[Any]
    places: Select[Any, Any] | None = None


def _board_of_totals(
    tenant_id: str, points_type: str, kind: Kind, span: Window, user_id: int | None
) -> Board:
    """The rows of one period and kind, in the order of their index."""
    score: SQLColumnExpression[Any]
    conditions: list[ColumnElement[bool]] = [
        PeriodTotal.tenant_id == tenant_id,
        PeriodTotal.points_type == points_type,
        PeriodTotal.period == str(span.period),
        PeriodTotal.starts == span.starts,
    ]
    if kind == Kind.ALL:
        score = PeriodTotal.total
    elif kind == Kind.MANUAL:
        # As the partial index on (total - reversal_total) has it.
        score = PeriodTotal.total - PeriodTotal.reversal_total
        conditions.append(PeriodTotal.entries > PeriodTotal.reversal_entries)
    else:
        score = PeriodTotal.reversal_total
        conditions.append(PeriodTotal.reversal_entries > 0)
    if kind == Kind.NONE:
        conditions.append(literal(False))
    if user_id is not None:
        # By the user's account: the primary key finds its row in any period.
        conditions.append(
            PeriodTotal.account_id == account_of(Account.user_id == user_id, points_type)
        )
    rows = select(PeriodTotal.user_id, score.label("score")).where(*conditions)
    if user_id is not None or kind == Kind.NONE:
        return Board(rows, score, PeriodTotal.user_id)
    places = select(PeriodScore.score, PeriodScore.users).where(
        PeriodScore.tenant_id == tenant_id,
        PeriodScore.points_type == points_type,
        PeriodScore.period == str(span.period),
        PeriodScore.starts == span.starts,
        PeriodScore.kind.in_(SCORE_KINDS[kind]),
    )
    return Board(rows, score, PeriodTotal.user_id, places)


def _board_of_entries(
    tenant_id: str, points_type: str, query: BoardQuery, span: Window, user_id: int | None
) -> Board:
    """The matching entries summed per user."""
    conditions = entry_conditions(tenant_id, points_type, query.search, user_id)
    kind = kind_of(query)
    if kind == Kind.MANUAL:
        conditions.append(LedgerEntry.reputation_type == ReputationType.MANUAL)
    elif kind == Kind.REVERSALS:
        conditions.append(LedgerEntry.reputation_type == ReputationType.REVERSAL)
    elif kind == Kind.NONE:
        conditions.append(literal(False))
    if query.reputation_context is not None:
        conditions.append(context_matches(query.reputation_context))
    conditions += made_within(since=query.reputed_at_from, through=query.reputed_at_to)
    if span.begins is not None and span.ends is not None:
        conditions += made_within(since=span.begins, before=span.ends)
    totals: Subquery = (
        select(
            Account.user_id.label("user_id"),
            # sum(bigint) is numeric in PostgreSQL; the API promises integers.
            cast(func.sum(LedgerEntry.amount), BigInteger).label("score"),
        )
        .join(Account, Account.id == LedgerEntry.account_id)
        .where(*conditions)
        .group_by(Account.user_id)
        .subquery()
    )
    return Board(select(totals.c.user_id, totals.c.score), totals.c.score, totals.c.user_id)


def board(
    session: Session, tenant_id: str, points_type: str, query: BoardQuery, user_id: int | None
) -> tuple[Board, Window]:
    span = window(session, tenant_id, query.period, query.at)
    return _board_in(span, tenant_id, points_type, query, user_id), span


def _board_in(
    span: Window, tenant_id: str, points_type: str, query: BoardQuery, user_id: int | None
) -> Board:
    """The board of a period already read (see `window`)."""
    if _from_entries(query):
        return _board_of_entries(tenant_id, points_type, query, span, user_id)
    return _board_of_totals(tenant_id, points_type, kind_of(query), span, user_id)


RANKINGS: dict[str, Callable[[], FunctionElement[Any]]] = {
    "row_number": func.row_number,
    "rank": func.rank,
    "dense_rank": func.dense_rank,
}


@dataclass(frozen=True)
class LeaderboardRow:
    """One user's total over the entries that passed the filters, and its place."""

    user_id: int
    username: str
    real_name: str
    total_score: int
    rank: int


@dataclass(frozen=True)
class Leaderboard:
    count: int
    rows: list[LeaderboardRow]
    window: Window


def leaderboard(
    session: Session, tenant_id: str, points_type: str, query: LeaderboardQuery
) -> Leaderboard:
    """How many users are on the board, and its page by total descending, then user id."""
    found, span = board(session, tenant_id, points_type, query, query.user_id)
    count = _size(session, found)
    if query.offset >= count:
        return Leaderboard(count, [], span)
    return Leaderboard(count, _page(session, found, query, query.ranking), span)


def _size(session: Session, found: Board) -> int:
    """How many users are on the board: its places summed, else its rows counted."""
    if found.places is None:
        return session.scalar(select(func.count()).select_from(found.rows.subquery())) or 0
    places = found.places.subquery()
    return int(session.scalar(select(func.coalesce(func.sum(places.c.users), 0))) or 0)


def _page(
    session: Session, found: Board, page: PageQuery, ranking: Ranking
) -> list[LeaderboardRow]:
    # Ranked in the board's order, so that the window and the limit read only the rows up
    # to the page's end; users are joined for the page's rows only.
    order = (found.score.desc(), found.user_id.asc())
    # row_number numbers ties in the board's order (by user id); rank and dense_rank
    # give ties one place, so they order by the score alone.
    window = order if ranking == "row_number" else (found.score.desc(),)
    ranked = (
        found.rows.add_columns(RANKINGS[ranking]().over(order_by=window).label("place"))
        .order_by(*order)
        .limit(page.limit)
        .offset(page.offset)
        .subquery()
    )
    rows = session.execute(
        select(ranked.c.user_id, User.username, User.real_name, ranked.c.score, ranked.c.place)
        .join(User, User.id == ranked.c.user_id)
        .order_by(ranked.c.score.desc(), ranked.c.user_id.asc())
    ).all()
    return [
        LeaderboardRow(row.user_id, row.username, row.real_name, int(row.score), int(row.place))
        for row in rows
    ]


def own_rank(
    session: Session, tenant_id: str, points_type: str, query: BoardQuery, user_id: int
) -> tuple[LeaderboardRow | None, int, Window]:
    """The user's row on the board (None if not on it), how many users are on it, and
    the period: counted, never ranked row by row."""
    found, span = board(session, tenant_id, points_type, query, None)
    own = _board_in(span, tenant_id, points_type, query, user_id)
    mine = session.execute(own.rows).one_or_none()
    if mine is None:
        return None, _size(session, found), span
    score = int(mine.score)
    if found.places is None:
        count, before = _ahead_in_rows(session, found, query.ranking, score, user_id)
    else:
        count, before = _ahead_in_places(session, found, query.ranking, score, user_id)
    place = 1 + before
    user = session.get_one(User, user_id)
    return LeaderboardRow(user.id, user.username, user.real_name, score, place), count, span


def _ahead_in_rows(
    session: Session, found: Board, ranking: Ranking, score: int, user_id: int
) -> tuple[int, int]:
    """The board's size and the places ahead of a user's, in one pass over its rows."""
    rows = found.rows.subquery()
    above = rows.c.score > score
    if ranking == "dense_rank":
        ahead = func.count(rows.c.score.distinct()).filter(above)
    elif ranking == "row_number":
        ties_before = (rows.c.score == score) & (rows.c.user_id < user_id)
        ahead = func.count().filter(above | ties_before)
    else:
        ahead = func.count().filter(above)
    count, before = session.execute(select(func.count(), ahead).select_from(rows)).one()
    return int(count), int(before)


def _ahead_in_places(
    session: Session, found: Board, ranking: Ranking, score: int, user_id: int
) -> tuple[int, int]:
    """The board's size and the places ahead of a user's, summed from the users at each
    score; row_number adds the users tied with it whose id is smaller (see _tie_count),
    read in the same statement, so that both are of one moment."""
    assert found.places is not None
    places = found.places.subquery()
    above = places.c.score > score
    ahead: ColumnElement[Any]
    if ranking == "dense_rank":
        ahead = func.count(places.c.score.distinct()).filter(above & (places.c.users > 0))
    else:
        ahead = func.coalesce(func.sum(places.c.users).filter(above), 0)
    size = func.coalesce(func.sum(places.c.users), 0)
    if ranking != "row_number":
        count, before = session.execute(select(size, ahead)).one()
        return int(count), int(before)
    tied = func.coalesce(func.sum(places.c.users).filter(places.c.score == score), 0)
    earlier, counted = _tie_count(session, found, score, user_id)
    count, before, ties, counted_ties = (
        int(value)
        for value in session.execute(select(size, ahead, tied, counted.scalar_subquery())).one()
    )
    # The user is one of the ties: those after it are the others that are not before it.
    return count, before + (counted_ties if earlier else ties - 1 - counted_ties)


def _tie_count(
    session: Session, found: Board, score: int, user_id: int
) -> tuple[bool, Select[Any]]:
    """Which of the users tied with `user_id` at `score` to count, those with a smaller
    id (True) or a larger one, and the count: the side with fewer of them, judged by where
    its id lies between the ties' lowest and highest. The ties are one range of the
    board's index, but counting them reads their rows' pages, which writes keep from
    being all-visible: thousands of users can share a score of a young period."""
    rows = found.rows.subquery()
    tied = rows.c.score == score
    lowest, highest = session.execute(
        select(func.min(rows.c.user_id), func.max(rows.c.user_id)).where(tied)
    ).one()
    earlier = lowest is None or user_id - lowest <= highest - user_id
    side = rows.c.user_id < user_id if earlier else rows.c.user_id > user_id
    return earlier, select(func.count()).where(tied & side)
