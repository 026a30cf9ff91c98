"""The community score routes: POST /api/v2/score/ and the request status routes."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel
from sqlalchemy import select

from api import examples, schemas
from api.accept import Accepted, finish, rejection, submit
from api.auth import current_principal, require_writer
from api.body import read_input, read_object
from api.openapi import FORM, JSON, documented
from api.points import known_type, reversal_of_or_409
from api.problems import Problem, validation_problem
from api.resources import db_session, resources
from api.serializers import queued_status, score_object, status_object
from api.structured import idempotency_key_header
from shared.fields import BIGINT_MAX
from shared.intake.adjustments import Adjustment
from shared.intake.validation import (
    FieldError,
    InvalidInput,
    ScoreInput,
    ScoreReverseInput,
    UserRef,
    validate_idempotency_key,
    validate_score,
)
from shared.models import (
    Account,
    AdjustmentRequest,
    AdjustmentStatus,
    LedgerEntry,
    User,
)


class RequestLookup(BaseModel):
    idempotency_key: str


bp = Blueprint("score", __name__, url_prefix="/api/v2/score")

# The headers the score operations take.
SCORE_HEADERS = {
    "Idempotency-Key": "1 to 255 printable ASCII characters; a retry with it changes nothing",
    "Prefer": "respond-async, or wait=N seconds (RFC 7240)",
}


@bp.post("/")
@documented(
    operation_id="createScore",
    summary="Add or remove score points for a user",
    body=ScoreInput,
    body_types=(JSON, FORM),
    headers=SCORE_HEADERS,
    responses={
        201: ("Applied: the Score object", schemas.Score),
        202: ("Accepted, not applied yet: the request's status", schemas.RequestStatus),
        409: ("Rejected by the account's state", schemas.Problem),
        422: ("Idempotency key reused with a different body", schemas.Problem),
    },
    body_examples=examples.SCORE_BODIES,
    answer_examples=examples.SCORE_ANSWERS,
)
@require_writer
def create_score() -> Response:
    """Accept a score adjustment (seeds 000 and 001) and answer 201, 202 or 409."""
    principal = current_principal()
    settings = resources().settings
    try:
        key = validate_idempotency_key(idempotency_key_header())
        command = validate_score(read_object(settings.max_body_bytes), settings.max_amount)
        points_type = settings.points_types[settings.default_points_type]
        adjustment = Adjustment(
            user_id=None,  # the accept statement finds the user the target names
            points_type=points_type.name,
            amount=command.amount,
            reputation_context=command.reputation_context,
            comment=command.comment,
        )
        accepted = submit(principal, command.user, adjustment, points_type, key)
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    return _answer(accepted)


def _answer(accepted: Accepted) -> Response:
    """201 with the Score object, 202 with the request's status, or the 409 of a rejection:
    each built from the stored rows (the creator is the stored one, also on a replay)."""
    recorded, done = accepted.recorded, accepted.completion
    if done is not None and done.status == AdjustmentStatus.REJECTED:
        raise rejection(accepted, done)
    if done is not None and done.entry is not None:
        response = jsonify(score_object(done.entry, recorded.user))
        response.status_code = 201
    elif accepted.read_row:
        session = db_session()
        row = session.get_one(AdjustmentRequest, recorded.request_id)
        response = jsonify(status_object(session, row))
        response.status_code = 202
    else:
        response = jsonify(queued_status(recorded, accepted.idempotency_key))
        response.status_code = 202
    return finish(response, accepted)


@bp.post("/<int:score_id>/reverse")
@documented(
    operation_id="reverseScore",
    summary="Reverse a score: one `reversal` entry (type 11) of the opposite amount",
    body=ScoreReverseInput,
    body_types=(JSON, FORM),
    headers=SCORE_HEADERS,
    responses={
        201: ("Applied: the reversal's Score object", schemas.Score),
        202: ("Accepted, not applied yet: the request's status", schemas.RequestStatus),
        404: ("No such score", schemas.Problem),
        409: (
            "Reversed already, not reversible, or rejected by the account's state",
            schemas.Problem,
        ),
        422: ("Idempotency key reused with a different body", schemas.Problem),
    },
)
@require_writer
def reverse(score_id: int) -> Response:
    """Accept the reversal of a score (a ledger entry of the caller's tenant)."""
    principal = current_principal()
    data = read_input(ScoreReverseInput, resources().settings.max_body_bytes)
    try:
        key = validate_idempotency_key(idempotency_key_header())
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    session = db_session()
    found = None
    if score_id <= BIGINT_MAX:
        found = session.execute(
            select(LedgerEntry, Account.user_id)
            .join(Account, Account.id == LedgerEntry.account_id)
            .where(LedgerEntry.id == score_id, LedgerEntry.tenant_id == principal.tenant_id)
        ).one_or_none()
    if found is None:
        raise Problem(404, "not-found", f"no score {score_id}")
    entry, user_id = found
    user = session.get_one(User, user_id)
    adjustment = reversal_of_or_409(entry, user, comment=data.comment or "")
    target = UserRef("score_id", user_id=user.id)
    accepted = submit(principal, target, adjustment, known_type(entry), key)
    return _answer(accepted)


@bp.get("/requests/<int:request_id>")
@documented(
    operation_id="getRequestStatus",
    summary="The status of an adjustment request",
    responses={
        200: ("The request's status", schemas.RequestStatus),
        404: ("No such request", schemas.Problem),
    },
)
@require_writer
def request_status(request_id: int) -> Response:
    """The status object of one request of the caller's tenant."""
    principal = current_principal()
    session = db_session()
    row = session.get(AdjustmentRequest, request_id) if request_id <= BIGINT_MAX else None
    if row is None or row.tenant_id != principal.tenant_id:
        raise Problem(404, "not-found", f"no request {request_id}")
    return jsonify(status_object(session, row))


@bp.get("/requests")
@documented(
    operation_id="getRequestByKey",
    summary="The status of the request with an idempotency key",
    query=RequestLookup,
    responses={
        200: ("The request's status", schemas.RequestStatus),
        400: ("No idempotency_key given", schemas.Problem),
        404: ("No request with this key", schemas.Problem),
    },
)
@require_writer
def request_by_key() -> Response:
    """The status object of the request with `?idempotency_key=K`."""
    key = request.args.get("idempotency_key", "")
    if not key:
        raise validation_problem(
            [FieldError("idempotency_key", "required", "this query parameter is required")]
        )
    try:
        validate_idempotency_key(key, "idempotency_key")
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    principal = current_principal()
    session = db_session()
    row = session.scalars(
        select(AdjustmentRequest).where(
            AdjustmentRequest.tenant_id == principal.tenant_id,
            AdjustmentRequest.idempotency_key == key,
        )
    ).one_or_none()
    if row is None:
        raise Problem(404, "not-found", "no request with this idempotency key")
    return jsonify(status_object(session, row))
