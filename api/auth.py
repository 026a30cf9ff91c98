"""Bearer-token authentication and role checks for the API's routes."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from flask import g, request

from api.problems import Problem
from api.resources import token_cache
from shared.intake.auth import Principal
from shared.models import Role

P = ParamSpec("P")
R = TypeVar("R")


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = 'Bearer realm="tally"'
    if error:
        challenge += f', error="{error}"'
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


def current_principal() -> Principal:
    """The authenticated caller of this request (set by `require_writer`)."""
    principal: Principal = g.principal
    return principal


def bearer_token() -> str:
    """The request's bearer token, or "" when it sends none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _authenticate() -> Principal:
    token = bearer_token()
    if not token:
        raise _unauthorized("a bearer token is required")
    principal = token_cache().principal(token)
    if principal is None:
        raise _unauthorized("the token is invalid, expired or revoked", "invalid_token")
    return principal


def require_role(*roles: Role) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Allow only tokens with one of `roles`; 401 without a valid token, 403 for others."""
    names = " or ".join(role.value for role in roles)

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            principal = _authenticate()
            if principal.role not in roles:
                raise Problem(403, "forbidden", f"this operation requires the {names} role")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper

    return decorate


require_writer = require_role(Role.ADMIN, Role.MODERATOR)
require_admin = require_role(Role.ADMIN)
