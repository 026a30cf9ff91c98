"""The OpenAPI document, generated from the pydantic models the routes validate and answer with.

A view declares its contract with `@documented(...)`; GET /openapi.json walks the
URL map and turns every declared view into an operation, and the schemas come
from the same models that parse the bodies and shape the answers, so the
document cannot drift from the code. GET /docs serves Swagger UI from the
`swagger-ui-bundle` package (no CDN).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

from apispec import APISpec
from flask import Blueprint, Flask, Response, current_app, jsonify, send_from_directory
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from swagger_ui_bundle import swagger_ui_path

from api.schemas import Problem as ProblemModel

F = TypeVar("F", bound=Callable[..., Any])

REF_TEMPLATE = "#/components/schemas/{model}"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
PROBLEM = "application/problem+json"
RULE_ARGUMENT = re.compile(r"<(?:(\w+):)?(\w+)>")

BLANK = {"type": "string", "pattern": "^\\s*$"}
QUERY_ERRORS: Mapping[int, str] = {414: "Request line too long"}
STANDARD_ERRORS: Mapping[int, str] = {
    401: "Missing or invalid bearer token",
    403: "The token's role may not do this",
    429: "Past the token's rate limit, or too many failed authentications from this "
    "address; retry after `Retry-After` seconds",
    503: "The database is unreachable; retry after `Retry-After` seconds",
}
# Headers of the answers, documented where the answers carry them.
REQUEST_ID = {
    "X-Request-ID": "The request's id in tally's logs: the caller's X-Request-ID if it sent a"
    " valid one, else a new one"
}
RETRY_AFTER = {"Retry-After": "Seconds to wait before trying again"}
RATE_LIMIT = {
    "RateLimit-Policy": 'The limit this answer counts against: `"token";q=3000;w=1`'
    " (draft-ietf-httpapi-ratelimit-headers: q requests per w seconds)",
    "RateLimit": 'Where the caller stands: `"token";r=2990;t=1` (r requests left, t seconds'
    " to the window's end)",
}
ACCEPTED = {
    "Location": "The status URL of the request (or the batch) this answer is about",
    "Idempotency-Key": "The request's key (a Structured Field string): the caller's, or"
    " the one tally made for a request that came without one",
    "Idempotent-Replayed": "`true` when the Idempotency-Key named a request accepted"
    " before: this is its answer, and nothing new was done",
}
PREFERENCE_APPLIED = {
    "Preference-Applied": "The preference honoured (RFC 7240): respond-async, or wait=N"
}
BODY_ERRORS: Mapping[int, str] = {
    400: "Invalid body: `errors` names each bad field",
    413: "Body too large",
    415: "Unsupported content type",
}


@dataclass(frozen=True)
class Example:
    """A named body in the document: one line on what it shows, and the body itself."""

    summary: str
    value: Any


Examples = Mapping[str, Example]


@dataclass(frozen=True)
class Contract:
    """What one view takes and answers; `operation_id` names it for generated clients
    (stable: renaming the view's function does not change it)."""

    operation_id: str
    summary: str
    responses: Mapping[int, tuple[str, type[BaseModel] | None]]
    body: type[BaseModel] | None = None
    body_types: tuple[str, ...] = (JSON,)
    query: type[BaseModel] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Request headers without which the request is refused (400).
    required_headers: tuple[str, ...] = ()
    public: bool = False
    tag: str = "score"
    error_model: type[BaseModel] = ProblemModel
    error_type: str = PROBLEM
    # The media types of a 200 streamed as text rather than a JSON model.
    streams: tuple[str, ...] = ()
    # Examples of the JSON body, and of the answers by status (each a declared answer).
    body_examples: Examples = field(default_factory=dict)
    answer_examples: Mapping[int, Examples] = field(default_factory=dict)


def documented(**contract: Any) -> Callable[[F], F]:
    """Attach the view's contract, from which /openapi.json is generated."""

    def attach(view: F) -> F:
        view.__openapi__ = Contract(**contract)  # type: ignore[attr-defined]
        return view

    return attach


def _openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    parameters = []
    for converter, name in RULE_ARGUMENT.findall(rule):
        schema = {"type": "integer"} if converter == "int" else {"type": "string"}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return RULE_ARGUMENT.sub(r"{\2}", rule), parameters


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            # An empty or blank value counts as absent, as everywhere in tally.
            "schema": {"anyOf": [_without_title(prop), BLANK]}
            if name not in required
            else _without_title(prop),
            "description": prop.get("description", ""),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def _without_title(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if key != "title"}


def _answer_headers(contract: Contract, status: int) -> dict[str, Any]:
    """The headers an answer of `status` to this operation carries."""
    headers = dict(REQUEST_ID)
    if not contract.public:
        headers |= RATE_LIMIT
    if status in (429, 503):
        headers |= RETRY_AFTER
    if "Idempotency-Key" in contract.headers and status in (201, 202, 409):
        headers |= ACCEPTED
    if "Prefer" in contract.headers and status in (200, 201, 202):
        headers |= PREFERENCE_APPLIED
    return {
        name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()
    }


def _examples(examples: Examples) -> dict[str, Any]:
    return {name: {"summary": e.summary, "value": e.value} for name, e in examples.items()}


def _operation(contract: Contract, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    def ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": REF_TEMPLATE.format(model=model.__name__)}

    responses: dict[str, Any] = {}
    errors = {} if contract.public else dict(STANDARD_ERRORS)
    if contract.body is not None:
        errors |= BODY_ERRORS
    for status, description in errors.items():
        responses[str(status)] = {
            "description": description,
            "content": {contract.error_type: {"schema": ref(contract.error_model)}},
        }
    if contract.query is not None:
        responses["400"] = {
            "description": "A malformed query parameter: `errors` names it",
            "content": {contract.error_type: {"schema": ref(contract.error_model)}},
        }
        # Refused by the HTTP server before tally sees it, so no body of ours.
        responses |= {str(status): {"description": text} for status, text in QUERY_ERRORS.items()}
    for status, (description, model) in contract.responses.items():
        if model is None:
            responses[str(status)] = {"description": description}
            if status == 200 and contract.streams:
                responses["200"]["content"] = {
                    media: {"schema": {"type": "string"}} for media in contract.streams
                }
            continue
        media = contract.error_type if issubclass(model, contract.error_model) else JSON
        responses[str(status)] = {
            "description": description,
            "content": {media: {"schema": ref(model)}},
        }
    for status, examples in contract.answer_examples.items():
        for media in responses[str(status)]["content"].values():
            media["examples"] = _examples(examples)
    for code, answer in responses.items():
        answer["headers"] = _answer_headers(contract, int(code))
    operation: dict[str, Any] = {
        "operationId": contract.operation_id,
        "summary": contract.summary,
        "tags": [contract.tag],
        "parameters": parameters
        + [
            {
                "name": name,
                "in": "header",
                "required": name in contract.required_headers,
                "schema": {"type": "string"},
                "description": text,
            }
            for name, text in contract.headers.items()
        ],
        "responses": responses,
    }
    if not contract.public:
        operation["security"] = [{"bearerAuth": []}]
    if contract.body is not None:
        schema = ref(contract.body)
        # A body whose fields are all optional may be left out (read as `{}`).
        operation["requestBody"] = {
            "required": bool(contract.body.model_json_schema().get("required")),
            "content": {media: {"schema": schema} for media in contract.body_types},
        }
        if contract.body_examples:
            operation["requestBody"]["content"][JSON]["examples"] = _examples(
                contract.body_examples
            )
    return operation


def _models(contracts: list[Contract]) -> set[type[BaseModel]]:
    models: set[type[BaseModel]] = set()
    for contract in contracts:
        models.add(contract.error_model)
        if contract.body is not None:
            models.add(contract.body)
        models.update(model for _, model in contract.responses.values() if model is not None)
    return models


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented route of `app`."""
    spec = APISpec(
        title="tally",
        version="1",
        openapi_version="3.1.0",
        info={"description": "An asynchronous points and reputation ledger."},
    )
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    schemas: dict[str, Any] = {}
    contracts: list[Contract] = []
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        contract = getattr(app.view_functions[rule.endpoint], "__openapi__", None)
        if contract is None:
            continue
        if any(known.operation_id == contract.operation_id for known in contracts):
            raise ValueError(f"two operations are named {contract.operation_id}")
        contracts.append(contract)
        path, parameters = _openapi_path(rule.rule)
        if contract.query is not None:
            parameters += _query_parameters(contract.query, schemas)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(contract, parameters)
    _, definitions = models_json_schema(
        [(model, "validation") for model in sorted(_models(contracts), key=lambda m: m.__name__)],
        ref_template=REF_TEMPLATE,
    )
    schemas.update(definitions.get("$defs", {}))
    for name, schema in sorted(schemas.items()):
        spec.components.schema(name, schema)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


bp = Blueprint("openapi", __name__)

DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tally API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>"""

DOCS_INIT = "window.ui = SwaggerUIBundle({url: '/openapi.json', dom_id: '#swagger-ui'});"


@cache
def _document_for(app_id: int, app: Flask) -> dict[str, Any]:
    return build_document(app)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return jsonify(_document_for(id(app), app))


@bp.get("/docs")
def docs() -> Response:
    """A browsable page for the OpenAPI document."""
    return Response(DOCS_PAGE, mimetype="text/html")


@bp.get("/docs/init.js")
def docs_init() -> Response:
    return Response(DOCS_INIT, mimetype="text/javascript")


@bp.get("/docs/assets/<path:filename>")
def docs_assets(filename: str) -> Response:
    """Swagger UI's own files, served from the installed package."""
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
