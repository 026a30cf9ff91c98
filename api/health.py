"""Liveness and readiness probes: GET /healthz and GET /readyz."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.openapi import documented
from api.problems import Problem
from api.resources import resources
from api.schemas import Health, NotReady
from shared.platform.health import readiness_problems

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented(
    operation_id="getLiveness",
    summary="Liveness",
    public=True,
    tag="operations",
    responses={200: ("The process is up", Health)},
)
def healthz() -> Response:
    """The process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
@documented(
    operation_id="getReadiness",
    summary="Readiness",
    public=True,
    tag="operations",
    responses={200: ("Ready", Health), 503: ("Not ready: what is wrong", NotReady)},
)
def readyz() -> Response:
    """Database reachable and migrated, Redis reachable; otherwise 503 naming what is not."""
    problems = readiness_problems(resources().engine, resources().redis)
    if problems:
        raise Problem(
            503,
            "not-ready",
            "; ".join(f"{name}: {reason}" for name, reason in problems.items()),
            extra={
                "checks": {
                    name: problems.get(name, "ok") for name in ("database", "schema", "redis")
                }
            },
        )
    return jsonify(status="ready", checks={"database": "ok", "schema": "ok", "redis": "ok"})
