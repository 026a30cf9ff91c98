"""GET /openapi.json covers every route, from the models that validate them; /docs is local."""

from __future__ import annotations

import re

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
