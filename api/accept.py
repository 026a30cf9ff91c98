"""After a request is recorded: publish it, wait for the worker, answer 201, 202 or 409."""

from __future__ import annotations

import redis.exceptions
from flask import Response, current_app, jsonify, url_for

from api.body import Preferences
from api.problems import Problem
from api.resources import db_session, publisher, resources, wait_slots
from api.serializers import load_score, status_object
from shared.models import FINAL_STATUSES, AdjustmentRequest, AdjustmentStatus
from shared.notify import CompletionWaiter
from shared.processing import claim_schedule
from worker.app import APPLY_ACCOUNT_TASK


def publish(account_id: str) -> None:
    """Hand the account to the workers unless a task for it is already queued.

    If Redis is down the outbox relay does it later: the committed row is enough.
    """
    try:
        if claim_schedule(resources().redis, account_id):
            publisher().send_task(APPLY_ACCOUNT_TASK, args=[account_id])
    except Exception:  # redis-py and kombu raise many kinds; the row is safe either way
        current_app.logger.warning("publish failed for account %s; relay will retry", account_id)


def _final_status(request_id: int) -> str:
    session = db_session()
    try:
        return session.get_one(AdjustmentRequest, request_id).status
    finally:
        session.rollback()  # end the read so the wait holds no connection


def wait_for_outcome(request_id: int, preferences: Preferences) -> bool:
    """Wait up to the preferred time for the request to reach a final status."""
    settings = resources().settings
    wait = settings.default_wait if preferences.wait is None else preferences.wait
    wait = min(wait, settings.max_wait)
    if preferences.respond_async or wait <= 0:
        return False
    slots = wait_slots()
    if not slots.acquire(blocking=False):
        return False  # enough threads wait already: answer 202 now
    try:
        with CompletionWaiter(resources().redis, request_id) as waiter:
            if _final_status(request_id) in FINAL_STATUSES:
                return True
            return waiter.wait(wait)
    except redis.exceptions.RedisError:
        current_app.logger.warning("cannot wait on Redis for request %s", request_id)
        return False
    finally:
        slots.release()


def status_url(request_id: int) -> str:
    return url_for("score.request_status", request_id=request_id, _external=True)


def settle(request_id: int, preferences: Preferences) -> AdjustmentRequest:
    """Wait as the client prefers, then the request row as it stands now."""
    wait_for_outcome(request_id, preferences)
    return db_session().get_one(AdjustmentRequest, request_id, populate_existing=True)


def rejection(row: AdjustmentRequest) -> Problem:
    """The 409 for a request the worker rejected because of the account's state."""
    return Problem(
        409,
        row.error_code or "rejected",
        row.error_message or "the adjustment was rejected",
        headers={"Location": status_url(row.id)},
        extra={"request_id": row.id, "code": row.error_code},
    )


def finish(
    response: Response, row: AdjustmentRequest, preferences: Preferences, *, replayed: bool
) -> Response:
    """The headers every adjustment answer carries: Location, and what was replayed or preferred."""
    response.headers["Location"] = status_url(row.id)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if response.status_code == 202 and preferences.respond_async:
        response.headers["Preference-Applied"] = "respond-async"
    return response


def answer(request_id: int, preferences: Preferences, *, replayed: bool) -> Response:
    """201 with the Score object, 409 with the rejection, or 202 with the status object."""
    row = settle(request_id, preferences)
    session = db_session()
    if row.status == AdjustmentStatus.REJECTED:
        raise rejection(row)
    if row.status == AdjustmentStatus.COMPLETED and row.ledger_entry_id is not None:
        response = jsonify(load_score(session, row.ledger_entry_id))
        response.status_code = 201
    else:
        response = jsonify(status_object(session, row))
        response.status_code = 202
    return finish(response, row, preferences, replayed=replayed)
