"""RFC 9457 problem details: the one way every error leaves the API."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import psycopg
import sqlalchemy.exc
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from shared.intake.validation import FieldError

PROBLEM_TYPE_BASE = "https://tally.dev/problems/"
RETRY_AFTER_SECONDS = 5
# A value the database cannot hold: a 400.
REFUSED_VALUES = (sqlalchemy.exc.DataError, psycopg.DataError)
# Unreachable, or every pooled connection busy past the pool timeout: both are a 503.
DATABASE_DOWN = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)


class Problem(Exception):
    """An error answer: status, a short type slug, a detail and the fields at fault.

    Its `code` is the slug in snake_case (`not_found`, `insufficient_balance`): one
    machine-readable vocabulary for every answer that says no, whatever its envelope.
    """

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @property
    def code(self) -> str:
        return self.slug.replace("-", "_")

    def document(self) -> dict[str, Any]:
        """The problem+json document."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            **self.extra,
        }
        if self.errors:
            body["errors"] = [
                {"field": e.field, "code": e.code, "message": e.message} for e in self.errors
            ]
        return body

    def response(self) -> Response:
        response = jsonify(self.document())
        response.status_code = self.status
        response.mimetype = "application/problem+json"
        response.headers.update(self.headers)
        return response


def validation_problem(errors: Sequence[FieldError]) -> Problem:
    return Problem(400, "validation", "the request has invalid fields", errors)


def unavailable(what: str) -> Problem:
    return Problem(
        503,
        "unavailable",
        f"{what} is unreachable; try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def as_problem(error: Exception) -> Problem:
    """The Problem for any error a view may raise (HTTP, database or our own)."""
    if isinstance(error, Problem):
        return error
    if isinstance(error, HTTPException):
        status = error.code or 500
        slug = HTTPStatus(status).phrase.lower().replace(" ", "-")
        headers = {}
        allowed = getattr(error, "valid_methods", None)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
        # A 429 from api.limits carries Retry-After on the response it prepared.
        if error.response is not None and "Retry-After" in error.response.headers:
            headers["Retry-After"] = error.response.headers["Retry-After"]
        return Problem(
            status, slug, error.description or HTTPStatus(status).phrase, headers=headers
        )
    if isinstance(error, REFUSED_VALUES):
        # Input the database cannot hold (say, a NUL byte) that a validator let through,
        # through SQLAlchemy or psycopg's own COPY (bulk batches). PostgreSQL's message
        # and the statement's parameters quote the value (an email, a comment): the log
        # says what was refused, by its SQLSTATE and column, only.
        refused = getattr(error, "orig", error)
        diag = getattr(refused, "diag", None)
        logging.getLogger(__name__).warning(
            "refused by the database: SQLSTATE %s, column %s",
            getattr(diag, "sqlstate", None) or type(refused).__name__,
            getattr(diag, "column_name", None) or "unknown",
        )
        return Problem(400, "validation", "a value cannot be stored or searched")
    if isinstance(error, DATABASE_DOWN):
        logging.getLogger(__name__).warning("database unavailable: %s", error)
        return unavailable("the database")
    raise error


HANDLED = (Problem, HTTPException, *REFUSED_VALUES, *DATABASE_DOWN)


def register_error_handlers(
    app: Flask, formats: Mapping[str, Callable[[Exception], Response]] | None = None
) -> None:
    """Answer every handled error as problem+json, or in the format of the routes it was for.

    A blueprint's own error handler answers the errors of its routes; a request that
    matched no route (a 404 or 405 from routing) is answered in the format of the
    path prefix in `formats` that it falls under, if any.
    """
    prefixes = dict(formats or {})

    def handle(error: Exception) -> Response:
        if request.url_rule is None:
            for prefix, render in prefixes.items():
                if request.path.startswith(prefix):
                    return render(error)
        return as_problem(error).response()

    for kind in HANDLED:
        app.register_error_handler(kind, handle)
