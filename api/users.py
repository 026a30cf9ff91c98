"""Provisioning users: POST /api/v2/users/ and GET /api/v2/users/{id} (admin only)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy.exc import IntegrityError

from api import schemas
from api.auth import current_principal, require_admin
from api.body import read_object
from api.openapi import documented
from api.problems import Problem, validation_problem
from api.resources import db_session, resources
from shared.fields import BIGINT_MAX
from shared.intake.users import balance_of, create_user
from shared.intake.validation import InvalidInput, UserInput, validate_user
from shared.models import User

bp = Blueprint("users", __name__, url_prefix="/api/v2/users")


def user_object(user: User) -> Response:
    points_type = resources().settings.default_points_type
    return jsonify(
        schemas.UserOut(
            id=user.id,
            username=user.username,
            external_id=user.external_id,
            real_name=user.real_name,
            email=user.email,
            avatar=user.avatar,
            description=user.description,
            role=user.role,
            reputation=balance_of(db_session(), user.id, points_type),
        ).model_dump(mode="json")
    )


@bp.post("/")
@documented(
    summary="Create a user",
    tag="users",
    body=UserInput,
    responses={
        201: ("The new user", schemas.UserOut),
        409: ("The username or external_id is taken", schemas.Problem),
    },
)
@require_admin
def create() -> Response:
    """Create a user in the caller's tenant."""
    try:
        data = validate_user(read_object(resources().settings.max_body_bytes))
        session = db_session()
        user = create_user(session, current_principal().tenant_id, data)
        session.commit()
    except InvalidInput as error:
        if any(e.code == "taken" for e in error.errors):
            raise Problem(409, "conflict", "the user exists", error.errors) from None
        raise validation_problem(error.errors) from None
    except IntegrityError:  # a concurrent twin won the race to the unique constraint
        raise Problem(409, "conflict", "the username or external_id is taken") from None
    response = user_object(user)
    response.status_code = 201
    return response


@bp.get("/<int:user_id>")
@documented(
    summary="A user, with its reputation",
    tag="users",
    responses={200: ("The user", schemas.UserOut), 404: ("No such user", schemas.Problem)},
)
@require_admin
def read(user_id: int) -> Response:
    """One user of the caller's tenant."""
    user = db_session().get(User, user_id) if user_id <= BIGINT_MAX else None
    if user is None or user.tenant_id != current_principal().tenant_id:
        raise Problem(404, "not-found", f"no user {user_id}")
    return user_object(user)
