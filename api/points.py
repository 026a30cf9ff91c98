"""Seed 002's points service routes, answered in its envelope, over the same outbox and worker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import func, select

from api import examples, schemas
from api.accept import NOT_REVERSIBLE, Accepted, finish, rejection, submit
from api.auth import current_principal, require_admin, require_writer
from api.body import read_input, read_object, read_query
from api.history import statement_object
from api.openapi import documented
from api.problems import HANDLED, Problem, as_problem, validation_problem
from api.resources import db_session, read_session, resources
from api.serializers import account_object, public_user_id, transaction_object
from api.structured import idempotency_key_header
from shared.fields import BIGINT_MAX, ShortText, format_timestamp
from shared.intake.accounts import set_status
from shared.intake.adjustments import Adjustment, NotReversible, reversal_of
from shared.intake.validation import (
    AccountStatusInput,
    AdjustPointsInput,
    FieldError,
    InvalidInput,
    ReverseInput,
    UserRef,
    check_future,
    validate_idempotency_key,
    validate_points,
)
from shared.models import (
    Account,
    AccountStatus,
    AdjustmentRequest,
    AdjustmentStatus,
    LedgerEntry,
    User,
)
from shared.platform.config import PointsType
from shared.reads.history import standings
from shared.reads.query_params import AsOfQuery, PageQuery, PointsStatementQuery

bp = Blueprint("points", __name__, url_prefix="/admin/points")

# The headers every points operation takes.
OPERATION_HEADERS = {
    "Idempotency-Key": "or `idempotency_key` in the body",
    "Prefer": "respond-async or wait=N",
}


def operation_contract(
    summary: str,
    body: Any,
    missing: str,
    rejected: str,
    answer: Any = schemas.PointOperationResponse,
) -> dict[str, Any]:
    """The documented contract of a points operation: 201, 202, 404, 409, 422 in the
    envelope; `missing` and `rejected` say what its 404 and 409 mean."""
    return {
        "summary": summary,
        "tag": "points",
        "body": body,
        "error_model": schemas.ErrorEnvelope,
        "error_type": "application/json",
        "headers": OPERATION_HEADERS,
        "responses": {
            201: ("Applied", answer),
            202: ("Accepted, not applied yet", answer),
            404: (missing, schemas.ErrorEnvelope),
            409: (rejected, schemas.ErrorEnvelope),
            422: ("Idempotency key reused with a different body", schemas.ErrorEnvelope),
        },
    }


def envelope(code: int, message: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "timestamp": format_timestamp(now())}
    if data is not None:
        body["data"] = data
    return body | extra


def now() -> datetime:
    return datetime.now(UTC)


@bp.errorhandler(Exception)
def as_envelope(error: Exception) -> Response:
    """Errors on these routes use seed 002's SimpleResponse, not problem+json."""
    if not isinstance(error, HANDLED):
        raise error
    problem = as_problem(error)
    extra: dict[str, Any] = {}
    if problem.errors:
        extra["errors"] = [
            {"field": e.field, "code": e.code, "message": e.message} for e in problem.errors
        ]
    # The envelope's `code` is the status: the machine-readable code goes beside it as
    # `reason`, and a rejection's request with it.
    extra["reason"] = problem.code
    if "request_id" in problem.extra:
        extra["request_id"] = problem.extra["request_id"]
    response = jsonify(envelope(problem.status, problem.detail, **extra))
    response.status_code = problem.status
    response.headers.update(problem.headers)
    return response


def user_named(user_ref: str) -> User:
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


def idempotency_key(body_key: str | None) -> str | None:
    """The key of the header or of the body (they must agree when both are given)."""
    header = idempotency_key_header()
    if header is not None and body_key is not None and header != body_key:
        raise validation_problem(
            [FieldError("idempotency_key", "conflict", "differs from the Idempotency-Key header")]
        )
    try:
        return validate_idempotency_key(header if header is not None else body_key)
    except InvalidInput as error:
        raise validation_problem(error.errors) from None


def recorded(key: str | None) -> bool:
    """Whether a request of the caller's tenant has this idempotency key already."""
    if key is None:
        return False
    found = db_session().scalar(
        select(AdjustmentRequest.id).where(
            AdjustmentRequest.tenant_id == current_principal().tenant_id,
            AdjustmentRequest.idempotency_key == key,
        )
    )
    return found is not None


def check_expiry(expires_at: datetime | None, key: str | None) -> None:
    """A 400 naming `expires_at` unless it is still to come, for a new request only: one
    accepted before that time and retried after it (its answer lost) is a replay. The
    key is looked up only then, not for every request."""
    try:
        check_future("expires_at", expires_at)
    except InvalidInput as error:
        if not recorded(key):
            raise validation_problem(error.errors) from None


@bp.post("/<user_ref>/adjust")
@documented(
    operation_id="adjustPoints",
    body_examples=examples.ADJUST_BODIES,
    answer_examples=examples.ADJUST_ANSWERS,
    **operation_contract(
        "Adjust a user's points",
        AdjustPointsInput,
        "No such user",
        "Rejected by the account's state",
    ),
)
@require_writer
def adjust(user_ref: str) -> Response:
    """Accept a points adjustment and answer 201, 202 or 409 in seed 002's envelope."""
    principal = current_principal()
    settings = resources().settings
    try:
        data = validate_points(read_object(settings.max_body_bytes), settings.max_amount)
        key = idempotency_key(data.idempotency_key)
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    check_expiry(data.expires_at, key)
    points_type = points_type_named(data.points_type)
    if data.allow_negative_balance and not principal.is_admin:
        raise Problem(403, "forbidden", "only admins may set allow_negative_balance")
    user = user_named(user_ref)
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
    return answer(submit(principal, target, adjustment, points_type, key), user)


def answer(accepted: Accepted, user: User, **more: Any) -> Response:
    """Seed 002's PointOperationResponse for an accepted operation: 201 applied, 202 not
    yet, 409 rejected; `more` adds members to `data` (a hold, say)."""
    recorded, done = accepted.recorded, accepted.completion
    if done is not None and done.status == AdjustmentStatus.REJECTED:
        raise rejection(accepted, done)
    session = db_session()
    row = session.get_one(AdjustmentRequest, recorded.request_id)
    entry = session.get(LedgerEntry, done.entry.id) if done and done.entry else None
    account = session.get_one(Account, recorded.account_id)
    data_out = {
        "account": account_object(account, user),
        "transaction": transaction_object(user, row, entry),
    } | more
    completed = entry is not None
    response = jsonify(envelope(0, "completed" if completed else "accepted", data_out))
    response.status_code = 201 if completed else 202
    return finish(response, accepted)


def points_type_named(name: str | None) -> PointsType:
    """The points type a body names (the points routes' default if none), or a 400."""
    settings = resources().settings
    points_type = settings.points_type(name or settings.points_default_type)
    if points_type is None:
        raise validation_problem(
            [
                FieldError(
                    "points_type", "unknown", f"known types: {', '.join(settings.points_types)}"
                )
            ]
        )
    return points_type


@bp.get("/<user_ref>")
@documented(
    operation_id="getPointsBalances",
    summary="A user's point accounts, now or as of a moment",
    tag="points",
    query=AsOfQuery,
    answer_examples=examples.BALANCES_ANSWERS,
    error_model=schemas.ErrorEnvelope,
    error_type="application/json",
    responses={
        200: ("Every account of the user", schemas.PointAccountsResponse),
        404: ("No such user", schemas.ErrorEnvelope),
    },
)
@require_writer
def accounts(user_ref: str) -> Response:
    """Every points account of the user, as it is or (`as_of`) as it stood then."""
    as_of = read_query(AsOfQuery).as_of
    user = user_named(user_ref)
    session = db_session()
    rows = session.scalars(
        select(Account).where(Account.user_id == user.id).order_by(Account.points_type)
    ).all()
    if as_of is None:
        return jsonify(envelope(0, "ok", [account_object(account, user) for account in rows]))
    then = standings(session, [account.id for account in rows], as_of)
    data = [account_object(account, user, then[account.id]) for account in rows]
    return jsonify(envelope(0, "ok", data, as_of=format_timestamp(as_of)))


@bp.get("/<user_ref>/statement")
@documented(
    operation_id="getPointsStatement",
    summary="A user's statement: opening and closing figures, totals by type, entries",
    tag="points",
    query=PointsStatementQuery,
    error_model=schemas.ErrorEnvelope,
    error_type="application/json",
    responses={
        200: ("The statement, its entries paged by `after`", schemas.StatementResponse),
        400: ("A malformed parameter", schemas.ErrorEnvelope),
        404: ("No such user", schemas.ErrorEnvelope),
    },
)
@require_writer
def account_statement(user_ref: str) -> Response:
    """The user's account of `points_type` (the routes' default) over [from, to)."""
    query = read_query(PointsStatementQuery)
    user = user_named(user_ref)
    points_type = points_type_named(query.points_type)
    body = statement_object(user, public_user_id(user), points_type.name, query)
    return jsonify(envelope(0, "ok", body))


class TransactionsQuery(PageQuery):
    points_type: ShortText = None


@bp.get("/<user_ref>/transactions")
@documented(
    operation_id="listPointsTransactions",
    summary="A user's ledger, newest first",
    tag="points",
    query=TransactionsQuery,
    error_model=schemas.ErrorEnvelope,
    error_type="application/json",
    responses={
        200: ("A page of transactions", schemas.PointTransactionsResponse),
        400: ("A malformed parameter", schemas.ErrorEnvelope),
        404: ("No such user", schemas.ErrorEnvelope),
    },
)
@require_writer
def transactions(user_ref: str) -> Response:
    """A page of the user's ledger entries as PointTransactionResponse objects."""
    query = read_query(TransactionsQuery)
    user = user_named(user_ref)
    session = read_session()
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


@bp.post("/transactions/<transaction_id>/reverse")
@documented(
    operation_id="reversePointsTransaction",
    **operation_contract(
        "Reverse a transaction: one entry of the opposite amount, linked to it",
        ReverseInput,
        "No such transaction",
        "Reversed already, not reversible, or rejected by the account's state",
    ),
)
@require_writer
def reverse(transaction_id: str) -> Response:
    """Accept the reversal of a ledger entry (seed 002's transaction id, a ULID)."""
    principal = current_principal()
    data = read_input(ReverseInput, resources().settings.max_body_bytes)
    key = idempotency_key(data.idempotency_key)
    if data.allow_negative_balance and not principal.is_admin:
        raise Problem(403, "forbidden", "only admins may set allow_negative_balance")
    found = (
        db_session()
        .execute(
            select(LedgerEntry, User)
            .join(Account, Account.id == LedgerEntry.account_id)
            .join(User, User.id == Account.user_id)
            .where(LedgerEntry.ulid == transaction_id, LedgerEntry.tenant_id == principal.tenant_id)
        )
        .one_or_none()
    )
    if found is None:
        raise Problem(404, "not-found", f"no transaction {transaction_id!r}")
    entry, user = found
    adjustment = reversal_of_or_409(
        entry, user, reason=data.reason or "", force=data.allow_negative_balance
    )
    target = UserRef("transaction_id", user_id=user.id)
    return answer(submit(principal, target, adjustment, known_type(entry), key), user)


def reversal_of_or_409(entry: LedgerEntry, user: User, **fields: Any) -> Adjustment:
    """The reversal of `entry`, or the 409 that says it cannot be reversed."""
    try:
        return reversal_of(entry, user.id, **fields)
    except NotReversible as error:
        raise Problem(409, NOT_REVERSIBLE, str(error)) from None


def known_type(entry: LedgerEntry) -> PointsType:
    """The configured points type of an entry's account (a 409 if it is configured no more)."""
    points_type = resources().settings.points_type(entry.points_type)
    if points_type is None:
        raise Problem(409, "unknown-points-type", f"{entry.points_type!r} is not configured")
    return points_type


def _set_status(user_ref: str, status: AccountStatus) -> Response:
    principal = current_principal()
    data = read_input(AccountStatusInput, resources().settings.max_body_bytes)
    points_type = points_type_named(data.points_type)
    user = user_named(user_ref)
    session = db_session()
    account = set_status(
        session, principal.tenant_id, user.id, points_type, status,
        by=principal.username, reason=data.reason or "",
    )  # fmt: skip
    session.commit()
    return jsonify(envelope(0, str(status), account_object(account, user)))


STATUS_CONTRACT: dict[str, Any] = {
    "tag": "points",
    "body": AccountStatusInput,
    "error_model": schemas.ErrorEnvelope,
    "error_type": "application/json",
    "responses": {
        200: ("The account, with its new status", schemas.PointAccountResponse),
        403: ("Not an admin", schemas.ErrorEnvelope),
        404: ("No such user", schemas.ErrorEnvelope),
    },
}


@bp.post("/<user_ref>/freeze")
@documented(
    operation_id="freezeAccounts",
    summary="Freeze an account: its requests are rejected until it is unfrozen",
    **STATUS_CONTRACT,
)
@require_admin
def freeze(user_ref: str) -> Response:
    """Freeze the user's account of a points type (idempotent)."""
    return _set_status(user_ref, AccountStatus.FROZEN)


@bp.post("/<user_ref>/unfreeze")
@documented(
    operation_id="unfreezeAccounts",
    summary="Unfreeze an account (requests rejected meanwhile stay rejected)",
    **STATUS_CONTRACT,
)
@require_admin
def unfreeze(user_ref: str) -> Response:
    """Unfreeze the user's account of a points type (idempotent)."""
    return _set_status(user_ref, AccountStatus.ACTIVE)
