"""Seed 002's points service routes, answered in its envelope, over the same outbox and worker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import func, select

from api import schemas
from api.accept import finish, rejection, submit
from api.auth import current_principal, require_writer
from api.body import read_object, read_query
from api.openapi import documented
from api.problems import HANDLED, Problem, as_problem, validation_problem
from api.resources import db_session, resources
from api.serializers import account_object, transaction_object
from shared.adjustments import Adjustment
from shared.fields import BIGINT_MAX, ShortText, format_timestamp
from shared.models import Account, AdjustmentRequest, AdjustmentStatus, LedgerEntry, User
from shared.query_params import PageQuery
from shared.validation import (
    AdjustPointsInput,
    FieldError,
    InvalidInput,
    UserRef,
    validate_idempotency_key,
    validate_points,
)

bp = Blueprint("points", __name__, url_prefix="/admin/points")


def envelope(code: int, message: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "timestamp": format_timestamp(now())}
    if data is not None:
        body["data"] = data
    return body | extra


def now() -> datetime:
    return datetime.now(UTC)


@bp.errorhandler(Exception)
def _as_envelope(error: Exception) -> Response:
    """Errors on these routes use seed 002's SimpleResponse, not problem+json."""
    if not isinstance(error, HANDLED):
        raise error
    problem = as_problem(error)
    errors = [{"field": e.field, "code": e.code, "message": e.message} for e in problem.errors]
    response = jsonify(
        envelope(problem.status, problem.detail, **({"errors": errors} if errors else {}))
    )
    response.status_code = problem.status
    response.headers.update(problem.headers)
    return response


def _user(user_ref: str) -> User:
    """The user named by the path: its external_id, or its integer id; 404 otherwise."""
    tenant = current_principal().tenant_id
    session = db_session()
    user = session.scalars(
        select(User).where(User.tenant_id == tenant, User.external_id == user_ref)
    ).one_or_none()
    if user is None and user_ref.isascii() and user_ref.isdigit() and int(user_ref) <= BIGINT_MAX:
        user = session.scalars(
            select(User).where(User.tenant_id == tenant, User.id == int(user_ref))
        ).one_or_none()
    if user is None:
        raise Problem(404, "not-found", f"no user {user_ref!r}")
    return user


def _idempotency_key(body_key: str | None) -> str | None:
    header = request.headers.get("Idempotency-Key")
    if header is not None and body_key is not None and header != body_key:
        raise validation_problem(
            [FieldError("idempotency_key", "conflict", "differs from the Idempotency-Key header")]
        )
    return validate_idempotency_key(header if header is not None else body_key)


@bp.post("/<user_ref>/adjust")
@documented(
    summary="Adjust a user's points (seed 002)",
    tag="points",
    body=AdjustPointsInput,
    error_model=schemas.Envelope,
    error_type="application/json",
    headers={
        "Idempotency-Key": "or `idempotency_key` in the body",
        "Prefer": "respond-async or wait=N",
    },
    responses={
        201: ("Applied", schemas.PointOperationResponse),
        202: ("Accepted, not applied yet", schemas.PointOperationResponse),
        404: ("No such user", schemas.Envelope),
        409: ("Rejected by the account's state", schemas.Envelope),
        422: ("Idempotency key reused with a different body", schemas.Envelope),
    },
)
@require_writer
def adjust(user_ref: str) -> Response:
    """Accept a points adjustment and answer 201, 202 or 409 in seed 002's envelope."""
    principal = current_principal()
    settings = resources().settings
    try:
        data = validate_points(read_object(settings.max_body_bytes), settings.max_amount)
        key = _idempotency_key(data.idempotency_key)
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    points_type = settings.points_type(data.points_type or settings.points_default_type)
    if points_type is None:
        raise validation_problem(
            [
                FieldError(
                    "points_type", "unknown", f"known types: {', '.join(settings.points_types)}"
                )
            ]
        )
    if data.allow_negative_balance and not principal.is_admin:
        raise Problem(403, "forbidden", "only admins may set allow_negative_balance")
    user = _user(user_ref)
    adjustment = Adjustment(
        user_id=user.id,
        points_type=points_type.name,
        amount=data.amount or 0,
        reason=data.reason or "",
        source=data.source or "",
        related_id=data.related_id or "",
        expires_at=data.expires_at,
        allow_negative=data.allow_negative_balance,
    )
    target = UserRef("user_ref", user_id=user.id)
    accepted = submit(principal, target, adjustment, points_type, key)
    recorded, done = accepted.recorded, accepted.completion
    if done is not None and done.status == AdjustmentStatus.REJECTED:
        raise rejection(recorded.request_id, done)
    session = db_session()
    row = session.get_one(AdjustmentRequest, recorded.request_id)
    entry = session.get(LedgerEntry, done.entry_id) if done and done.entry_id else None
    account = session.get_one(Account, recorded.account_id)
    data_out = {
        "account": account_object(account, user),
        "transaction": transaction_object(user, row, entry),
    }
    completed = entry is not None
    response = jsonify(envelope(0, "completed" if completed else "accepted", data_out))
    response.status_code = 201 if completed else 202
    return finish(response, accepted)


@bp.get("/<user_ref>")
@documented(
    summary="A user's point accounts (seed 002)",
    tag="points",
    error_model=schemas.Envelope,
    error_type="application/json",
    responses={
        200: ("Every account of the user", schemas.PointAccountsResponse),
        404: ("No such user", schemas.Envelope),
    },
)
@require_writer
def accounts(user_ref: str) -> Response:
    """Every points account of the user."""
    user = _user(user_ref)
    rows = db_session().scalars(
        select(Account).where(Account.user_id == user.id).order_by(Account.points_type)
    )
    return jsonify(envelope(0, "ok", [account_object(account, user) for account in rows]))


class TransactionsQuery(PageQuery):
    points_type: ShortText = None


@bp.get("/<user_ref>/transactions")
@documented(
    summary="A user's ledger, newest first (seed 002)",
    tag="points",
    query=TransactionsQuery,
    error_model=schemas.Envelope,
    error_type="application/json",
    responses={
        200: ("A page of transactions", schemas.PointTransactionsResponse),
        400: ("A malformed parameter", schemas.Envelope),
        404: ("No such user", schemas.Envelope),
    },
)
@require_writer
def transactions(user_ref: str) -> Response:
    """A page of the user's ledger entries as PointTransactionResponse objects."""
    query = read_query(TransactionsQuery)
    user = _user(user_ref)
    session = db_session()
    scope = (
        select(LedgerEntry, AdjustmentRequest)
        .join(AdjustmentRequest, AdjustmentRequest.id == LedgerEntry.request_id)
        .join(Account, Account.id == LedgerEntry.account_id)
        .where(Account.user_id == user.id)
    )
    if query.points_type:
        scope = scope.where(Account.points_type == query.points_type)
    total = session.scalar(select(func.count()).select_from(scope.subquery())) or 0
    rows = session.execute(
        scope.order_by(LedgerEntry.id.desc()).limit(query.limit).offset(query.offset)
    ).all()
    items = [transaction_object(user, req, entry) for entry, req in rows]
    page = {"items": items, "total": total, "limit": query.limit, "offset": query.offset}
    return jsonify(envelope(0, "ok", page))
