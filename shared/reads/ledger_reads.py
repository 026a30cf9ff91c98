"""Reading the ledger: the filtered list of entries and the leaderboard, both computed in SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    ScalarSelect,
    Subquery,
    UnaryExpression,
    and_,
    cast,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session, aliased

from shared.models import Account, EntryType, LedgerEntry, ReputationType, User
from shared.reads.query_params import (
    EntryFilters,
    LeaderboardQuery,
    Ordering,
    PageQuery,
    ScoreListQuery,
)

LIKE_ESCAPE = "/"
CONTEXT_SEPARATOR = "|"

ScoreRow = tuple[LedgerEntry, User, User]
"""An entry, the user whose account it is in, and the user who created it."""

ORDERINGS: dict[Ordering, tuple[UnaryExpression[Any], ...]] = {
    "-reputed_at": (LedgerEntry.created_at.desc(), LedgerEntry.id.desc()),
    "reputed_at": (LedgerEntry.created_at.asc(), LedgerEntry.id.asc()),
    "-score": (LedgerEntry.amount.desc(), LedgerEntry.id.desc()),
    "score": (LedgerEntry.amount.asc(), LedgerEntry.id.asc()),
}


@dataclass(frozen=True)
class LeaderboardRow:
    """One user's total over the entries that passed the filters."""

    user_id: int
    username: str
    real_name: str
    total_score: int


# The character right after CONTEXT_SEPARATOR ("|") in byte order.
SEGMENT_END = "}"


def like_escape(text: str) -> str:
    """`text` with LIKE's wildcards taken literally (escaped with LIKE_ESCAPE)."""
    for special in (LIKE_ESCAPE, "%", "_"):
        text = text.replace(special, LIKE_ESCAPE + special)
    return text


def _context_matches(context: str) -> ColumnElement[bool]:
    """The context itself or any context under it, whole segments only.

    Byte-wise ranges (the text_pattern_ops operators, which the context index
    serves) rather than LIKE: `C|...` is exactly the range [`C|`, `C}`), because
    `}` follows `|`; and a plain prefix would let `contest|first` match
    `contest|first_place`, which the `= C OR >= C|` part rules out.
    """
    column = LedgerEntry.reputation_context
    at_least = column.op("~>=~", is_comparison=True)
    less_than = column.op("~<~", is_comparison=True)
    return and_(
        at_least(context),
        less_than(context + SEGMENT_END),
        or_(column == context, at_least(context + CONTEXT_SEPARATOR)),
    )


def _account_of(user: ColumnElement[bool], points_type: str) -> ScalarSelect[str]:
    """The id of the user's account of `points_type` (one at most: they are unique)."""
    return select(Account.id).where(user, Account.points_type == points_type).scalar_subquery()


def _entry_conditions(
    tenant_id: str, points_type: str, query: EntryFilters
) -> list[ColumnElement[bool]]:
    """Conditions on an entry joined to its account, common to both reads."""
    conditions = [LedgerEntry.tenant_id == tenant_id, LedgerEntry.points_type == points_type]
    if query.user_id is not None:
        conditions.append(
            LedgerEntry.account_id == _account_of(Account.user_id == query.user_id, points_type)
        )
    if query.search is not None:
        pattern = f"%{like_escape(query.search)}%"
        conditions.append(
            or_(
                LedgerEntry.comment.ilike(pattern, escape=LIKE_ESCAPE),
                LedgerEntry.reputation_context.ilike(pattern, escape=LIKE_ESCAPE),
            )
        )
    return conditions


def _list_conditions(
    tenant_id: str, points_type: str, query: ScoreListQuery
) -> list[ColumnElement[bool]]:
    conditions = _entry_conditions(tenant_id, points_type, query)
    if query.username is not None:
        # A subquery rather than a join: counting millions of entries need not touch users.
        named = select(User.id).where(User.tenant_id == tenant_id, User.username == query.username)
        conditions.append(
            LedgerEntry.account_id
            == _account_of(Account.user_id == named.scalar_subquery(), points_type)
        )
    if query.reputation_context is not None:
        conditions.append(_context_matches(query.reputation_context))
    if query.created_after is not None:
        conditions.append(LedgerEntry.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(LedgerEntry.created_at <= query.created_before)
    return conditions


def list_scores(
    session: Session, tenant_id: str, points_type: str, query: ScoreListQuery
) -> tuple[int, list[ScoreRow]]:
    """How many entries of the tenant's `points_type` accounts pass `query`, and its page."""
    conditions = _list_conditions(tenant_id, points_type, query)
    # No join: a user's filter names its account, so counts read one index.
    matching = select(LedgerEntry.id).where(*conditions)
    count = session.scalar(select(func.count()).select_from(matching.subquery())) or 0
    if query.offset >= count:
        return count, []
    ordering = ORDERINGS[query.ordering]
    # The page's ids first, its users after: sorting or skipping many entries then never
    # looks up a user for an entry that is not on the page.
    page_ids = matching.order_by(*ordering).limit(query.limit).offset(query.offset)
    creator = aliased(User)
    rows = session.execute(
        select(LedgerEntry, User, creator)
        .join(Account, Account.id == LedgerEntry.account_id)
        .join(User, User.id == Account.user_id)
        .join(creator, creator.id == LedgerEntry.created_by)
        .where(LedgerEntry.id.in_(page_ids.scalar_subquery()))
        .order_by(*ordering)
    )
    return count, [(entry, user, created_by) for entry, user, created_by in rows]


def _filters_entries(query: LeaderboardQuery) -> bool:
    """Whether a filter looks at single entries; if not, the balances are the totals."""
    return (
        query.search is not None
        or query.reputation_type is not None
        or query.reputed_at_from is not None
        or query.reputed_at_to is not None
        or query.exclude_manual
        or query.exclude_reset
    )


def _totals_from_entries(tenant_id: str, points_type: str, query: LeaderboardQuery) -> Subquery:
    conditions = _entry_conditions(tenant_id, points_type, query)
    if query.reputation_type is not None:
        conditions.append(LedgerEntry.reputation_type == query.reputation_type)
    if query.reputed_at_from is not None:
        conditions.append(LedgerEntry.created_at >= query.reputed_at_from)
    if query.reputed_at_to is not None:
        conditions.append(LedgerEntry.created_at <= query.reputed_at_to)
    if query.exclude_manual:
        conditions.append(LedgerEntry.reputation_type != ReputationType.MANUAL)
    if query.exclude_reset:
        conditions.append(LedgerEntry.type != EntryType.REVERSAL)
        conditions.append(LedgerEntry.reputation_type != ReputationType.REVERSAL)
    return (
        select(
            Account.user_id.label("user_id"),
            # sum(bigint) is numeric in PostgreSQL; the API promises integers.
            cast(func.sum(LedgerEntry.amount), BigInteger).label("total_score"),
        )
        .join(Account, Account.id == LedgerEntry.account_id)
        .where(*conditions)
        .group_by(Account.user_id)
        .subquery()
    )


def _totals_from_balances(tenant_id: str, points_type: str, query: LeaderboardQuery) -> Subquery:
    """Unfiltered totals: each balance is the sum of its entries (invariant 1), one row a user."""
    conditions = [
        Account.tenant_id == tenant_id,
        Account.points_type == points_type,
        # Only accounts with entries, as the aggregate would give: amounts are never 0,
        # so an account has an entry exactly when it has earned or spent something.
        or_(Account.total_earned > 0, Account.total_spent > 0),
    ]
    if query.user_id is not None:
        conditions.append(Account.user_id == query.user_id)
    return (
        select(Account.user_id.label("user_id"), Account.balance.label("total_score"))
        .where(*conditions)
        .subquery()
    )


def _page_of_totals(
    session: Session, totals: Subquery, page: PageQuery
) -> tuple[int, list[LeaderboardRow]]:
    # The window count rides along with the page, so the totals are computed once;
    # users are joined only for the rows of the page.
    ranked = (
        select(totals.c.user_id, totals.c.total_score, func.count().over().label("full_count"))
        .order_by(totals.c.total_score.desc(), totals.c.user_id.asc())
        .limit(page.limit)
        .offset(page.offset)
        .subquery()
    )
    rows = session.execute(
        select(
            ranked.c.user_id,
            User.username,
            User.real_name,
            ranked.c.total_score,
            ranked.c.full_count,
        )
        .join(User, User.id == ranked.c.user_id)
        .order_by(ranked.c.total_score.desc(), ranked.c.user_id.asc())
    ).all()
    if rows:
        count = int(rows[0].full_count)
    elif page.offset == 0:
        count = 0
    else:  # past the end: the window saw no row, so count on its own
        count = session.scalar(select(func.count()).select_from(totals)) or 0
    return count, [
        LeaderboardRow(row.user_id, row.username, row.real_name, int(row.total_score))
        for row in rows
    ]


def leaderboard(
    session: Session, tenant_id: str, points_type: str, query: LeaderboardQuery
) -> tuple[int, list[LeaderboardRow]]:
    """How many users have a total under `query`, and its page by total descending, then id."""
    if _filters_entries(query):
        totals = _totals_from_entries(tenant_id, points_type, query)
    else:
        totals = _totals_from_balances(tenant_id, points_type, query)
    return _page_of_totals(session, totals, query)
