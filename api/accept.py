"""The one accept path of single adjustments: record, dispatch, wait; and the answer's parts.

Both POST /api/v2/score/ and POST /admin/points/{id}/adjust come through `submit`;
they differ only in how they name the user and in the envelope of the answer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import Response, current_app
from sqlalchemy import text

from api.body import Preferences, read_preferences
from api.links import link_to
from api.problems import Problem
from api.resources import completions, publisher, release_session, resources, wait_slots
from api.serializers import StoredEntry
from api.structured import idempotency_key_field, new_idempotency_key
from shared.flow.dispatch import Lane
from shared.intake.adjustments import Adjustment, Recorded, SubjectTaken
from shared.intake.adjustments import submit as record
from shared.intake.auth import Principal
from shared.intake.idempotency import IdempotencyConflict
from shared.intake.validation import FieldError, UserRef
from shared.models import FINAL_STATUSES
from shared.platform.config import PointsType
from shared.platform.db import autocommit
from shared.platform.metrics import ADJUSTMENTS_ACCEPTED

log = logging.getLogger(__name__)

# Refusals at accept (nothing recorded), answered 409 like the worker's rejections.
ALREADY_REVERSED = "already_reversed"
NOT_REVERSIBLE = "not_reversible"


@dataclass(frozen=True)
class Completion:
    """A request's final state, as stored: its rejection, or its ledger entry."""

    request_id: int
    status: str
    error_code: str | None = None
    error_message: str | None = None
    entry: StoredEntry | None = None


@dataclass(frozen=True)
class Accepted:
    """A recorded request and, if it became final while the client waited, its outcome."""

    recorded: Recorded
    completion: Completion | None
    preferences: Preferences
    # Whether the answer must come from the request row (a replay, or a wait that timed out).
    read_row: bool
    # The caller's key, or the one made for a request that had none.
    idempotency_key: str


def submit(
    principal: Principal,
    target: UserRef,
    adjustment: Adjustment,
    points_type: PointsType,
    idempotency_key: str | None,
) -> Accepted:
    """Record the adjustment (committed before any 2xx), hand it to the workers, wait.

    Raises InvalidInput for an unknown user, a 422 Problem for a reused key and a 409
    Problem for a second reversal of one entry.
    """
    release_session()  # a route's earlier reads: one connection per thread at a time
    # Without a key of the caller's, one of ours, returned in the answer: a retry with it
    # is then as safe as with the caller's own.
    idempotency_key = idempotency_key or new_idempotency_key()
    try:
        # One statement, its own transaction: committed when it returns.
        with autocommit(resources().engine) as connection:
            recorded = record(
                connection, principal, target, adjustment, points_type, idempotency_key
            )
    except IdempotencyConflict as conflict:
        raise Problem(
            422,
            "idempotency-key-reused",
            str(conflict),
            [FieldError("Idempotency-Key", "reused", "this key was used with a different body")],
        ) from None
    except SubjectTaken:
        raise Problem(
            409,
            ALREADY_REVERSED,
            "the entry is reversed already (or its reversal is pending)",
        ) from None
    if recorded.created:
        ADJUSTMENTS_ACCEPTED.inc()
        log.info(
            "adjustment accepted",
            extra={
                "adjustment_id": recorded.request_id,
                "account_id": recorded.account_id,
                "idempotency_key": idempotency_key,
            },
        )
        dispatch(recorded.account_id)
    preferences = read_preferences()
    # A replay may be final already; a new request cannot be.
    completion = None if recorded.created else final_state(recorded.request_id)
    read_row = not recorded.created
    if completion is None:
        completion, waited = wait_for_outcome(recorded.request_id, preferences)
        read_row = read_row or waited
    return Accepted(recorded, completion, preferences, read_row, idempotency_key)


def dispatch(account_id: str) -> None:
    """Hand the account to the workers; if Redis is down the outbox relay does it later."""
    try:
        publisher().dispatchers[Lane.INTERACTIVE].notify([account_id])
    except Exception:  # redis-py and kombu raise many kinds; the row is safe either way
        current_app.logger.warning("dispatch failed for account %s; relay will retry", account_id)


def wait_for_outcome(request_id: int, preferences: Preferences) -> tuple[Completion | None, bool]:
    """Wait up to the preferred time for the request to become final; (its stored final
    state, whether it waited). An announcement only wakes the wait: the outcome is read
    from the database, and a wake-up the database does not bear out waits on."""
    settings = resources().settings
    wait = settings.default_wait if preferences.wait is None else preferences.wait
    wait = min(wait, settings.max_wait)
    if preferences.respond_async or wait <= 0:
        return None, False
    slots = wait_slots()
    if not slots.acquire(blocking=False):
        return None, False  # enough threads wait already: answer 202 now
    try:
        deadline = time.monotonic() + wait
        heard_before = True
        while True:
            left = deadline - time.monotonic()
            woken = left > 0 and completions().wait(request_id, left, heard_before=heard_before)
            # Woken or not (an announcement may have been lost), the database knows.
            completion = final_state(request_id)
            if completion is not None or not woken:
                return completion, True
            heard_before = False
    finally:
        slots.release()


FINAL_STATE = text("""
    SELECT r.status, r.error_code, r.error_message, e.id AS entry_id, e.amount,
           e.balance_after, e.comment, e.reputation_context, e.reputation_type, e.created_at,
           c.id AS creator_id, c.username AS creator_username, c.avatar AS creator_avatar
    FROM adjustment_requests r
    LEFT JOIN ledger_entries e ON e.id = r.ledger_entry_id
    LEFT JOIN users c ON c.id = e.created_by
    WHERE r.id = :id
""")


def final_state(request_id: int) -> Completion | None:
    """The request's outcome as stored, or None while it is pending."""
    with autocommit(resources().engine) as connection:
        row = connection.execute(FINAL_STATE, {"id": request_id}).one()
    if row.status not in FINAL_STATUSES:
        return None
    entry = None
    if row.entry_id is not None:
        entry = StoredEntry(
            row.entry_id, row.amount, row.balance_after, row.comment, row.reputation_context,
            row.reputation_type, row.created_at, row.creator_id, row.creator_username,
            row.creator_avatar,
        )  # fmt: skip
    return Completion(request_id, row.status, row.error_code, row.error_message, entry)


def status_url(request_id: int) -> str:
    return link_to("score.request_status", request_id=request_id)


def rejection(accepted: Accepted, completion: Completion) -> Problem:
    """The 409 for a request the worker rejected because of the account's state."""
    request_id = accepted.recorded.request_id
    headers = {
        "Location": status_url(request_id),
        "Idempotency-Key": idempotency_key_field(accepted.idempotency_key),
    }
    if not accepted.recorded.created:
        headers["Idempotent-Replayed"] = "true"
    return Problem(
        409,
        completion.error_code or "rejected",
        completion.error_message or "the adjustment was rejected",
        headers=headers,
        extra={"request_id": request_id},
    )


def finish(response: Response, accepted: Accepted) -> Response:
    """The headers every adjustment answer carries: Location, and what was replayed or preferred."""
    response.headers["Location"] = status_url(accepted.recorded.request_id)
    response.headers["Idempotency-Key"] = idempotency_key_field(accepted.idempotency_key)
    if not accepted.recorded.created:
        response.headers["Idempotent-Replayed"] = "true"
    if response.status_code == 202 and accepted.preferences.respond_async:
        response.headers["Preference-Applied"] = "respond-async"
    return response
