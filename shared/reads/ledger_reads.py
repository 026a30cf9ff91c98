"""Reading the ledger: the filtered list of entries (boards: shared.reads.boards)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    UnaryExpression,
    and_,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session, aliased

from shared.ledger.partitions import ulids_before, ulids_from
from shared.models import Account, LedgerEntry, User
from shared.reads.query_params import (
    Ordering,
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


# The character right after CONTEXT_SEPARATOR ("|") in byte order.
SEGMENT_END = "}"


def like_escape(text: str) -> str:
    """`text` with LIKE's wildcards taken literally (escaped with LIKE_ESCAPE)."""
    for special in (LIKE_ESCAPE, "%", "_"):
        text = text.replace(special, LIKE_ESCAPE + special)
    return text


def context_matches(context: str) -> ColumnElement[bool]:
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


def account_of(user: ColumnElement[bool], points_type: str) -> ScalarSelect[str]:
    """The id of the user's account of `points_type` (one at most: they are unique)."""
    return select(Account.id).where(user, Account.points_type == points_type).scalar_subquery()


def entry_conditions(
    tenant_id: str, points_type: str, search: str | None, user_id: int | None
) -> list[ColumnElement[bool]]:
    """Conditions on an entry, common to the list and the boards that sum entries."""
    conditions = [LedgerEntry.tenant_id == tenant_id, LedgerEntry.points_type == points_type]
    if user_id is not None:
        conditions.append(
            LedgerEntry.account_id == account_of(Account.user_id == user_id, points_type)
        )
    if search is not None:
        pattern = f"%{like_escape(search)}%"
        conditions.append(
            or_(
                LedgerEntry.comment.ilike(pattern, escape=LIKE_ESCAPE),
                LedgerEntry.reputation_context.ilike(pattern, escape=LIKE_ESCAPE),
            )
        )
    return conditions


def made_within(
    since: datetime | None = None, before: datetime | None = None,
    through: datetime | None = None,
) -> list[ColumnElement[bool]]:  # fmt: skip
    """Entries made at or after `since`, and before `before` or at the latest `through`:
    on `created_at`, and on the ULID too, so that PostgreSQL plans and reads only the
    partitions of those months."""
    conditions = []
    if since is not None:
        conditions += [LedgerEntry.created_at >= since, LedgerEntry.ulid >= ulids_from(since)]
    if before is not None:
        conditions += [LedgerEntry.created_at < before, LedgerEntry.ulid < ulids_before(before)]
    if through is not None:
        conditions += [LedgerEntry.created_at <= through, LedgerEntry.ulid < ulids_before(through)]
    return conditions


def _list_conditions(
    tenant_id: str, points_type: str, query: ScoreListQuery
) -> list[ColumnElement[bool]]:
    conditions = entry_conditions(tenant_id, points_type, query.search, query.user_id)
    if query.username is not None:
        # A subquery rather than a join: counting millions of entries need not touch users.
        named = select(User.id).where(User.tenant_id == tenant_id, User.username == query.username)
        conditions.append(
            LedgerEntry.account_id
            == account_of(Account.user_id == named.scalar_subquery(), points_type)
        )
    if query.reputation_context is not None:
        conditions.append(context_matches(query.reputation_context))
    conditions += _made(query)
    return conditions


def _made(query: ScoreListQuery) -> list[ColumnElement[bool]]:
    return made_within(since=query.created_after, through=query.created_before)


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
        # The span again: the page's entries are looked up in its months only.
        .where(LedgerEntry.id.in_(page_ids.scalar_subquery()), *_made(query))
        .order_by(*ordering)
    )
    return count, [(entry, user, created_by) for entry, user, created_by in rows]
