"""Liveness and readiness probes: GET /healthz and GET /readyz."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify, request

from api.openapi import documented
from api.problems import RETRY_AFTER_SECONDS, Problem
from api.resources import resources
from api.schemas import Health, NotReady
from shared.platform.config import Settings
from shared.platform.health import readiness_problems

bp = Blueprint("health", __name__)

# Methods that may write: refused while acknowledgements could not be replicated.
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CHECKS = ("database", "schema", "redis", "replication")


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
    """Database reachable and migrated, Redis reachable, and (TALLY_REPLICATION=required)
    a synchronous standby streaming; otherwise 503 naming what is not. Under "preferred"
    an unreplicated primary is ready, and `checks.replication` says what is wrong."""
    problems = readiness_problems(resources().engine, resources().redis)
    replication = resources().replication
    names = CHECKS if replication.watched else CHECKS[:-1]  # replication is the last
    unreplicated = replication.problem()
    if unreplicated and replication.mode == "required":
        problems["replication"] = unreplicated
    if problems:
        raise Problem(
            503,
            "not-ready",
            "; ".join(f"{name}: {reason}" for name, reason in problems.items()),
            extra={"checks": {name: problems.get(name, "ok") for name in names}},
        )
    checks = dict.fromkeys(names, "ok")
    if unreplicated:
        checks["replication"] = f"acknowledgements are not replicated: {unreplicated}"
    return jsonify(status="ready", checks=checks)


def refuse_unreplicated_writes(app: Flask, settings: Settings) -> None:
    """Under TALLY_REPLICATION=required, no write starts while no synchronous standby
    streams: a 503 at once, rather than a commit that would wait for one. Otherwise no
    hook at all: nothing is added to a request's path."""
    if settings.replication != "required":
        return

    @app.before_request
    def _refuse() -> None:
        if request.method not in WRITES:
            return
        problem = resources().replication.problem()
        if problem:
            raise Problem(
                503,
                "replication-unavailable",
                f"not accepting writes: {problem}; try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
