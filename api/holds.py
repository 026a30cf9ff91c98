"""Holds (seed 002's frozen_balance): place, capture, release, read; two-phase, like a card
authorization. Each change is an adjustment request through the one accept path."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from api import examples, schemas
from api.accept import submit
from api.auth import current_principal, require_writer
from api.body import read_input, read_object
from api.openapi import documented
from api.points import (
    answer,
    as_envelope,
    check_expiry,
    envelope,
    idempotency_key,
    operation_contract,
    points_type_named,
    user_named,
)
from api.problems import Problem, validation_problem
from api.resources import db_session, resources
from api.serializers import hold_object
from shared.fields import BIGINT_MAX
from shared.intake.adjustments import Adjustment
from shared.intake.validation import (
    CaptureInput,
    HoldInput,
    InvalidInput,
    ReleaseInput,
    UserRef,
    validate_capture,
    validate_hold,
)
from shared.models import Account, AdjustmentRequest, Operation, User
from shared.platform.config import PointsType

bp = Blueprint("holds", __name__, url_prefix="/admin/points")
bp.register_error_handler(Exception, as_envelope)


@bp.post("/<user_ref>/holds")
@documented(
    operation_id="placeHold",
    body_examples=examples.HOLD_BODIES,
    answer_examples=examples.HOLD_ANSWERS,
    **operation_contract(
        "Hold points: move them from spendable to frozen_balance",
        HoldInput,
        "No such user",
        "Rejected: not enough spendable points, or the account is frozen",
        schemas.HoldOperationResponse,
    ),
)
@require_writer
def place(user_ref: str) -> Response:
    """Accept a hold of `amount` points, released at `expires_at` if still open."""
    principal = current_principal()
    settings = resources().settings
    try:
        data = validate_hold(read_object(settings.max_body_bytes), settings.max_amount)
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    key = idempotency_key(data.idempotency_key)
    check_expiry(data.expires_at, key)
    points_type = points_type_named(data.points_type)
    user = user_named(user_ref)
    adjustment = Adjustment(
        user_id=user.id,
        points_type=points_type.name,
        amount=data.amount or 0,
        reason=data.reason or "",
        expires_at=data.expires_at,
        entry_type=Operation.HOLD,
    )
    accepted = submit(principal, UserRef("user_ref", user_id=user.id), adjustment, points_type, key)
    hold_id = accepted.recorded.request_id
    return answer(accepted, user, hold=hold_object(db_session(), hold_id))


@bp.post("/<user_ref>/holds/<int:hold_id>/capture")
@documented(
    operation_id="captureHold",
    **operation_contract(
        "Capture a hold, or part of it: the points leave the account",
        CaptureInput,
        "No such user or hold",
        "Rejected: the hold is not open, timed out, or smaller than the capture",
        schemas.HoldOperationResponse,
    ),
)
@require_writer
def capture(user_ref: str, hold_id: int) -> Response:
    """Accept the capture of `amount` points of an open hold (all of it by default)."""
    settings = resources().settings
    try:
        data = validate_capture(read_object(settings.max_body_bytes), settings.max_amount)
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    return _close(user_ref, hold_id, Operation.CAPTURE, data.amount or 0, data.reason,
                  data.idempotency_key)  # fmt: skip


@bp.post("/<user_ref>/holds/<int:hold_id>/release")
@documented(
    operation_id="releaseHold",
    **operation_contract(
        "Release a hold: its points are spendable again",
        ReleaseInput,
        "No such user or hold",
        "Rejected: the hold is not open or timed out",
        schemas.HoldOperationResponse,
    ),
)
@require_writer
def release(user_ref: str, hold_id: int) -> Response:
    """Accept the release of an open hold."""
    data = read_input(ReleaseInput, resources().settings.max_body_bytes)
    return _close(user_ref, hold_id, Operation.RELEASE, 0, data.reason, data.idempotency_key)


def _close(
    user_ref: str,
    hold_id: int,
    operation: Operation,
    amount: int,
    reason: str | None,
    body_key: str | None,
) -> Response:
    key = idempotency_key(body_key)
    user = user_named(user_ref)
    points_type = _hold_points_type(user, hold_id)
    adjustment = Adjustment(
        user_id=user.id,
        points_type=points_type.name,
        amount=amount,
        reason=reason or "",
        related_id=str(hold_id),
        entry_type=operation,
    )
    target = UserRef("user_ref", user_id=user.id)
    accepted = submit(current_principal(), target, adjustment, points_type, key)
    return answer(accepted, user, hold=hold_object(db_session(), hold_id))


def _hold_points_type(user: User, hold_id: int) -> PointsType:
    """The points type of the user's hold `hold_id` (accepted, maybe not applied), or a 404."""
    points_type = None
    if hold_id <= BIGINT_MAX:
        points_type = db_session().scalar(
            select(Account.points_type)
            .join(AdjustmentRequest, AdjustmentRequest.account_id == Account.id)
            .where(
                AdjustmentRequest.id == hold_id,
                AdjustmentRequest.user_id == user.id,
                AdjustmentRequest.entry_type == Operation.HOLD,
            )
        )
    if points_type is None:
        raise Problem(404, "not-found", f"no hold {hold_id} of this user")
    return points_type_named(points_type)


@bp.get("/<user_ref>/holds/<int:hold_id>")
@documented(
    operation_id="getHold",
    summary="A hold: its amount, status and what was captured",
    tag="points",
    error_model=schemas.ErrorEnvelope,
    error_type="application/json",
    responses={
        200: ("The hold", schemas.HoldResponse),
        404: ("No such user or hold", schemas.ErrorEnvelope),
    },
)
@require_writer
def read(user_ref: str, hold_id: int) -> Response:
    """The hold, pending until the worker has applied it."""
    user = user_named(user_ref)
    _hold_points_type(user, hold_id)
    return jsonify(envelope(0, "ok", hold_object(db_session(), hold_id)))
