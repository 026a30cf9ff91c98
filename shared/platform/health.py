"""Readiness checks: is the database reachable and migrated, is Redis reachable."""

from __future__ import annotations

from redis import Redis
from sqlalchemy import Engine

from shared.platform.migrate import current_revision, head_revision


def readiness_problems(engine: Engine, redis: Redis) -> dict[str, str]:
    """What is not ready, by component; empty when everything is fine."""
    problems: dict[str, str] = {}
    try:
        current, head = current_revision(engine), head_revision()  # the query proves it is up
        if current != head:
            problems["schema"] = f"database is at revision {current}, code expects {head}"
    except Exception as error:  # any failure to reach the database means "not ready"
        problems["database"] = f"unreachable: {type(error).__name__}"
    try:
        redis.ping()
    except Exception as error:
        problems["redis"] = f"unreachable: {type(error).__name__}"
    return problems
