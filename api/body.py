"""Reading request bodies (JSON or forms) and the RFC 7240 Prefer header."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import request

from api.problems import Problem, validation_problem
from shared.validation import FieldError, InvalidInput, Model, parse_input

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def read_object() -> dict[str, Any]:
    """The body as a flat mapping: a JSON object, or a form's first values."""
    mimetype = request.mimetype
    if _is_json(mimetype):
        try:
            data = json.loads(request.get_data(cache=True))
        except (ValueError, RecursionError):
            raise validation_problem(
                [FieldError("body", "invalid_json", "the body is not valid JSON")]
            ) from None
        if not isinstance(data, dict):
            raise validation_problem(
                [FieldError("body", "invalid_type", "the body must be a JSON object")]
            )
        return data
    if mimetype in FORM_TYPES:
        return {key: request.form.get(key) for key in request.form}
    if not mimetype and not request.get_data(cache=True):
        return {}
    raise Problem(
        415,
        "unsupported-media-type",
        "send application/json or application/x-www-form-urlencoded",
    )


def read_query(model: type[Model]) -> Model:
    """The query string validated by `model`; a 400 naming each bad parameter."""
    raw: dict[str, Any] = {key: request.args.get(key) for key in request.args}
    try:
        return parse_input(model, raw)
    except InvalidInput as error:
        raise validation_problem(error.errors) from None


@dataclass(frozen=True)
class Preferences:
    """What the client asked for with `Prefer` (RFC 7240)."""

    respond_async: bool = False
    wait: float | None = None


def read_preferences() -> Preferences:
    respond_async = False
    wait: float | None = None
    for header in request.headers.getlist("Prefer"):
        for preference in header.split(","):
            name, _, value = preference.strip().partition("=")
            name = name.strip().lower()
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                try:
                    wait = max(0.0, float(value.strip().strip('"')))
                except ValueError:
                    continue  # An unparseable preference is ignored, as RFC 7240 asks.
    return Preferences(respond_async=respond_async, wait=wait)
