"""History reads: accounts as of a moment and statements (for both APIs), and the export."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, request
from sqlalchemy import select

from api import schemas
from api.auth import current_principal, require_admin
from api.body import read_query
from api.links import this_url
from api.openapi import documented
from api.problems import validation_problem
from api.resources import read_engine, read_session
from shared.fields import format_timestamp
from shared.intake.validation import FieldError
from shared.models import Account, User
from shared.reads.history import Standing, export, statement
from shared.reads.query_params import ExportQuery, StatementQuery

bp = Blueprint("history", __name__, url_prefix="/api/v2")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def standing_object(standing: Standing) -> dict[str, Any]:
    return schemas.dump(
        schemas.StandingOut(
            balance=standing.balance,
            frozen_balance=standing.frozen_balance,
            expired_points=standing.expired_points,
            total_earned=standing.total_earned,
            total_spent=standing.total_spent,
            entries=standing.entries,
        )
    )


def _bounds(begins: datetime | None, ends: datetime | None) -> tuple[datetime, datetime]:
    """[from, to): the beginning and now by default; a 400 if `to` is not after `from`."""
    start, end = begins or EPOCH, ends or datetime.now(UTC)
    if end <= start:
        raise validation_problem([FieldError("to", "before_from", "must be after `from`")])
    return start, end


def statement_object(
    user: User, public_id: str, points_type: str, query: StatementQuery
) -> dict[str, Any]:
    """The statement `query` asks for, of the user's account of `points_type`."""
    begins, ends = _bounds(query.from_, query.to)
    session = read_session()
    account_id = session.scalar(
        select(Account.id).where(Account.user_id == user.id, Account.points_type == points_type)
    )
    try:
        found = statement(session, account_id, begins, ends, query.after, query.limit)
    except ValueError as error:
        raise validation_problem([FieldError("after", "unknown", str(error))]) from None
    following = None
    if found.next_after is not None:
        params = [(k, v) for k, v in request.args.items(multi=True) if k != "after"]
        following = this_url(urlencode([*params, ("after", str(found.next_after))]))
    return schemas.dump(
        schemas.StatementOut.model_validate(
            {
                "user_id": public_id,
                "points_type": points_type,
                "from": format_timestamp(query.from_),
                "to": format_timestamp(ends),
                "opening": standing_object(found.opening),
                "closing": standing_object(found.closing),
                "totals": [
                    {"type": kind, "amount": amount, "entries": entries}
                    for kind, (amount, entries) in found.totals.items()
                ],
                "entries": [_statement_entry(row) for row in found.entries],
                "next": following,
            }
        )
    )


def _statement_entry(row: Any) -> dict[str, Any]:
    return {
        "id": row.ulid,
        "entry_id": row.id,
        "request_id": row.request_id,
        "type": row.type,
        "amount": row.amount,
        "frozen_amount": row.frozen_amount,
        "expired": row.expired,
        "balance_before": row.balance_before,
        "balance_after": row.balance_after,
        "reputation_context": row.reputation_context,
        "comment": row.comment,
        "reason": row.reason,
        "source": row.source,
        "related_id": row.related_id,
        "idempotency_key": row.idempotency_key,
        "created_at": format_timestamp(row.created_at),
    }


MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


@bp.get("/export")
@documented(
    operation_id="exportLedger",
    summary="Stream a tenant's ledger entries (or requests) as NDJSON or CSV, resumable",
    tag="history",
    query=ExportQuery,
    streams=tuple(MEDIA_TYPES.values()),
    responses={
        200: ("The rows in id order: `after` with the last id read resumes", None),
        400: ("A malformed parameter", schemas.Problem),
        403: ("Not an admin", schemas.Problem),
    },
)
@require_admin
def export_rows() -> Response:
    """Streamed by PostgreSQL's COPY on a connection of its own, so memory stays flat."""
    query = read_query(ExportQuery)
    begins, ends = _bounds(query.from_, query.to)
    tenant = current_principal().tenant_id
    engine = read_engine()

    def blocks() -> Iterator[bytes]:
        with engine.connect() as connection:
            yield from export(
                connection, tenant, query.kind, query.format, begins, ends, query.after
            )

    # Everything the stream needs is read here: it runs after the request context is gone.
    response = Response(blocks(), mimetype=MEDIA_TYPES[query.format])
    response.headers["Content-Disposition"] = (
        f'attachment; filename="tally-{query.kind}.{query.format}"'
    )
    return response
