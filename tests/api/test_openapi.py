"""GET /openapi.json covers every route, from the models that validate them; /docs is local."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
from flask import Flask
from flask.testing import FlaskClient

UNDOCUMENTED = {
    "/openapi.json",
    "/docs",
    "/docs/init.js",
    "/docs/assets/<path:filename>",
    "/static/<path:filename>",
    "/metrics",
}


def test_every_route_is_in_the_document(flask_app: Flask, client: FlaskClient) -> None:
    document = client.get("/openapi.json").json
    assert document["openapi"].startswith("3.1")
    documented = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
    }
    for rule in flask_app.url_map.iter_rules():
        if rule.rule in UNDOCUMENTED:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {rule.rule} is not documented"


def test_request_schema_is_the_validating_model(client: FlaskClient) -> None:
    document = client.get("/openapi.json").json
    body = document["paths"]["/api/v2/score/"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-www-form-urlencoded"}
    score_input = document["components"]["schemas"]["ScoreInput"]["properties"]
    assert set(score_input) == {
        "user_id",
        "username",
        "user",
        "score",
        "reputation_context",
        "comment",
    }
    # Integers may arrive as strings of digits (seed 001), and the document says so.
    assert {"type": "string", "pattern": "^-?[0-9]+$"} in score_input["score"]["anyOf"]


def test_docs_page_serves_its_own_assets(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.get_data(as_text=True).lower()
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.get_data(as_text=True)):
        assert asset.startswith("/"), asset
        response = client.get(asset)
        assert response.status_code == 200, asset
        response.close()


def test_a_body_is_required_exactly_where_the_route_needs_one(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").json["paths"]
    freeze = paths["/admin/points/{user_ref}/freeze"]["post"]["requestBody"]
    assert freeze["required"] is False  # every field optional: no body freezes all
    bulk = paths["/api/v2/score/bulk"]["post"]["requestBody"]
    assert bulk["required"] is True


def test_every_operation_has_a_unique_id_and_documents_its_answers_headers(
    client: FlaskClient,
) -> None:
    """Issue 24: operationIds for generated clients; every answer's X-Request-ID, Retry-After
    on 429 and 503, Location and Idempotent-Replayed on accepted adjustments."""
    document = client.get("/openapi.json").json
    operations = [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    ids = [operation["operationId"] for _, _, operation in operations]
    assert len(ids) == len(set(ids)) == len(operations)
    for path, method, operation in operations:
        for status, answer in operation["responses"].items():
            headers = answer.get("headers", {})
            assert "X-Request-ID" in headers, (path, method, status)
            if status in ("429", "503"):
                assert "Retry-After" in headers, (path, method, status)
    create = document["paths"]["/api/v2/score/"]["post"]
    assert create["operationId"] == "createScore"
    for status in ("201", "202", "409"):
        assert {"Location", "Idempotent-Replayed"} <= set(create["responses"][status]["headers"])
    assert "Preference-Applied" in create["responses"]["202"]["headers"]


def test_required_headers_are_marked_and_no_internal_words_remain(client: FlaskClient) -> None:
    document = client.get("/openapi.json").json

    def header(path: str, name: str) -> dict:
        (found,) = [p for p in document["paths"][path]["post"]["parameters"] if p["name"] == name]
        return found

    assert header("/api/v2/score/bulk", "Idempotency-Key")["required"] is True
    # The import derives its key from the file when none is given, and says so.
    imported = header("/api/v2/score/import/", "Idempotency-Key")
    assert imported["required"] is False and "SHA-256" in imported["description"]
    assert not re.search(r"\bseeds? 00\d", str(document), re.IGNORECASE)


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others: an example
    with a misspelt or stale member fails, rather than passing as an extra one."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict):
        closed.setdefault("additionalProperties", False)
    return closed


def _examples(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(where, schema, value) of every example: of bodies, answers and schemas."""
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            contents = [("body", operation.get("requestBody", {}).get("content", {}))]
            contents += [(status, answer.get("content", {}))
                         for status, answer in operation["responses"].items()]  # fmt: skip
            for part, content in contents:
                for media, described in content.items():
                    for name, example in described.get("examples", {}).items():
                        where = f"{method.upper()} {path} {part} {media} {name}"
                        yield where, described["schema"], example["value"]
    for name, schema in document["components"]["schemas"].items():
        for n, value in enumerate(schema.get("examples", [])):
            yield f"schema {name} example {n}", {"$ref": f"#/components/schemas/{name}"}, value


def test_every_example_is_valid_against_its_schema(client: FlaskClient) -> None:
    """Issue 24: the main operations have examples of their bodies and answers, a problem
    among them, and each is valid against the schema it illustrates."""
    document = client.get("/openapi.json").json
    components = {"schemas": _closed(document["components"]["schemas"])}
    examples = list(_examples(document))
    invalid = []
    for where, schema, value in examples:
        validator = jsonschema_rs.Draft202012Validator(schema | {"components": components})
        invalid += [f"{where}: {error.message}" for error in validator.iter_errors(value)]
    assert invalid == [], "\n".join(invalid)

    exemplified = {where.split(" ")[1] + " " + where.split(" ")[2] for where, _, _ in examples}
    for operation, part in [
        ("/api/v2/score/", "body"), ("/api/v2/score/", "201"), ("/api/v2/score/", "400"),
        ("/api/v2/score/", "409"), ("/admin/points/{user_ref}/adjust", "body"),
        ("/admin/points/{user_ref}/adjust", "201"), ("/admin/points/{user_ref}/adjust", "409"),
        ("/admin/points/{user_ref}/holds", "body"), ("/admin/points/{user_ref}/holds", "201"),
        ("/api/v2/score/bulk", "body"), ("/api/v2/score/bulk", "202"),
        ("/api/v2/score/leaderboard/", "200"), ("/admin/points/{user_ref}", "200"),
    ]:  # fmt: skip
        assert f"{operation} {part}" in exemplified, (operation, part)
    adjust = document["paths"]["/admin/points/{user_ref}/adjust"]["post"]["requestBody"]
    assert {"award", "spend", "adjust"} <= set(adjust["content"]["application/json"]["examples"])


def test_the_problem_schema_has_rfc_9457s_members_and_tallys(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    problem = schemas["Problem"]
    assert set(problem["properties"]) == {
        "type", "title", "status", "detail", "instance", "code", "errors", "request_id",
    }  # fmt: skip
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    assert problem["additionalProperties"] is True  # a route's own members (error_count, ...)
    assert set(schemas["FieldErrorOut"]["required"]) == {"field", "code", "message"}
    assert all(schemas["FieldErrorOut"]["properties"][name].get("description")
               for name in ("field", "code", "message"))  # fmt: skip
    # The routes' own extension members are in their problems' schemas.
    assert {"error_count", "errors_by_item"} <= set(schemas["BulkProblem"]["properties"])
    assert "checks" in schemas["NotReady"]["properties"]
    assert "reason" in schemas["ErrorEnvelope"]["required"]
