"""Provisioning users: POST and GET /api/v2/users/, GET /api/v2/users/{id} (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api import examples, schemas
from api.auth import current_principal, require_admin, require_writer
from api.body import read_object, read_query
from api.history import statement_object
from api.openapi import documented
from api.pagination import page
from api.problems import Problem, validation_problem
from api.resources import db_session, read_session, resources
from shared.fields import BIGINT_MAX, format_timestamp
from shared.intake.users import balance_of, create_user, list_users
from shared.intake.validation import InvalidInput, UserInput, validate_user
from shared.models import Account, User
from shared.reads.history import ZERO, standings
from shared.reads.query_params import AsOfQuery, StatementQuery, UserListQuery

bp = Blueprint("users", __name__, url_prefix="/api/v2/users")


def user_object(user: User, as_of: datetime | None = None) -> Response:
    """The user, with its reputation now or (`as_of`) as it stood then."""
    points_type = resources().settings.default_points_type
    session = db_session()
    if as_of is None:
        return jsonify(user_out(user, balance_of(session, user.id, points_type)))
    account = session.scalar(
        select(Account.id).where(Account.user_id == user.id, Account.points_type == points_type)
    )
    then = standings(session, [account], as_of) if account else {}
    return jsonify(user_out(user, then.get(account or "", ZERO).balance, as_of))


def user_out(user: User, reputation: int, as_of: datetime | None = None) -> dict[str, Any]:
    """The UserOut of `user` with its reputation (`as_of`: the moment it is given for)."""
    return schemas.UserOut(
        id=user.id,
        username=user.username,
        external_id=user.external_id,
        real_name=user.real_name,
        email=user.email,
        avatar=user.avatar,
        description=user.description,
        role=user.role,
        reputation=reputation,
        as_of=None if as_of is None else format_timestamp(as_of),
    ).model_dump(mode="json", exclude=set() if as_of else {"as_of"})


@bp.get("/")
@documented(
    operation_id="listUsers",
    summary="List the tenant's users in id order, with their reputation",
    tag="users",
    query=UserListQuery,
    responses={
        200: ("A page of users", schemas.UserPage),
        400: ("A malformed parameter", schemas.Problem),
    },
)
@require_admin
def list_all() -> Response:
    """A page of the caller's tenant's users; `username` or `external_id` finds one."""
    query = read_query(UserListQuery)
    points_type = resources().settings.default_points_type
    count, rows = list_users(
        read_session(), current_principal().tenant_id, points_type,
        limit=query.limit, offset=query.offset,
        username=query.username, external_id=query.external_id,
    )  # fmt: skip
    return jsonify(page([user_out(user, reputation) for user, reputation in rows], count, query))


@bp.post("/")
@documented(
    operation_id="createUser",
    summary="Create a user",
    tag="users",
    body=UserInput,
    responses={
        201: ("The new user", schemas.UserOut),
        409: ("The username or external_id is taken", schemas.Problem),
    },
    body_examples=examples.USER_BODIES,
    answer_examples=examples.USER_ANSWERS,
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
    operation_id="getUser",
    summary="A user, with its reputation now or as of a moment",
    tag="users",
    query=AsOfQuery,
    responses={200: ("The user", schemas.UserOut), 404: ("No such user", schemas.Problem)},
)
@require_admin
def read(user_id: int) -> Response:
    """One user of the caller's tenant."""
    as_of = read_query(AsOfQuery).as_of
    return user_object(_user_of_tenant(user_id), as_of)


@bp.get("/<int:user_id>/statement")
@documented(
    operation_id="getReputationStatement",
    summary="A user's reputation statement: opening and closing, totals by type, entries",
    tag="users",
    query=StatementQuery,
    responses={
        200: ("The statement, its entries paged by `after`", schemas.StatementOut),
        400: ("A malformed parameter", schemas.Problem),
        404: ("No such user", schemas.Problem),
    },
)
@require_writer
def reputation_statement(user_id: int) -> Response:
    """The user's account of the default points type over [from, to)."""
    query = read_query(StatementQuery)
    user = _user_of_tenant(user_id)
    points_type = resources().settings.default_points_type
    return jsonify(statement_object(user, str(user.id), points_type, query))


def _user_of_tenant(user_id: int) -> User:
    user = db_session().get(User, user_id) if user_id <= BIGINT_MAX else None
    if user is None or user.tenant_id != current_principal().tenant_id:
        raise Problem(404, "not-found", f"no user {user_id}")
    return user
