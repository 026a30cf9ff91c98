"""Examples of the main operations' bodies and answers, for the OpenAPI document.

Each is an answer tally gave (ids, times and keys made readable); the document's test
checks every one against the schema it illustrates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from api.openapi import Example

TENANT = "tnt_example_001"
ACCOUNT = "01M8ZJ4BYJ739HZXJE3CY19V6G"
MARIO = {"id": 2, "username": "mario.rossi", "real_name": "Mario Rossi", "email": "",
         "description": "", "avatar": ""}  # fmt: skip


def _problem(status: int, title: str, slug: str, detail: str, **more: Any) -> dict[str, Any]:
    code = slug.replace("-", "_")
    return {"type": f"https://tally.dev/problems/{slug}", "title": title, "status": status,
            "detail": detail, "code": code, **more}  # fmt: skip


def _refused(status: int, message: str, reason: str, **more: Any) -> dict[str, Any]:
    return {"code": status, "message": message, "timestamp": "2026-04-15T10:30:02.120Z",
            "reason": reason, **more}  # fmt: skip


# --- POST /api/v2/score/ -----------------------------------------------------------------

SCORE_BODIES = {
    "by_username": Example(
        "An award to a user named by username",
        {"username": "mario.rossi", "score": 10, "reputation_context": "contest|first_place|apis",
         "comment": "Winner of the APIS contest"},
    ),
    "by_user_id": Example(
        "A deduction from a user named by id",
        {"user_id": 2, "score": -3, "comment": "duplicate answer removed"},
    ),
    "older_client": Example(
        "An older client's body: `user`, and integers as strings",
        {"user": "2", "score": "20", "comment": "Monthly bonus"},
    ),
}  # fmt: skip
SCORE = {
    "id": 1,
    "user": MARIO | {"reputation": 10},
    "score": 10,
    "reputation_type": 10,
    "reputation_type_description": "manual",
    "comment": "Winner of the APIS contest",
    "reputation_context": "contest|first_place|apis",
    "created_by": {"id": 1, "username": "admin", "avatar": ""},
    "reputed_at": "2026-04-15T10:30:00.615594Z",
}
QUEUED = {
    "id": 2, "idempotency_key": "fix-2026-04-15-mario", "status": "queued", "attempts": 0,
    "last_error": None, "error": None, "created_at": "2026-04-15T10:30:01.578519Z",
    "started_at": None, "completed_at": None, "batch_id": None, "cut": 0, "score": None,
}  # fmt: skip
INVALID = _problem(
    400, "Bad Request", "validation", "the request has invalid fields",
    errors=[
        {"field": "score", "code": "integer", "message": "must be an integer"},
        {"field": "reputation_context", "code": "empty_segment",
         "message": "must not contain empty segments"},
    ],
)  # fmt: skip
FROZEN = _problem(409, "Conflict", "account_frozen", "the account is frozen", request_id=10)
KEY_REUSED = _problem(
    422, "Unprocessable Entity", "idempotency-key-reused",
    "idempotency key 'apis-2026-winner' was already used with a different body",
    errors=[{"field": "Idempotency-Key", "code": "reused",
             "message": "this key was used with a different body"}],
)  # fmt: skip
SCORE_ANSWERS: Mapping[int, Mapping[str, Example]] = {
    201: {"applied": Example("Applied within the wait", SCORE)},
    202: {"queued": Example("Accepted; the worker has not applied it yet", QUEUED)},
    400: {"invalid": Example("Every field at fault, each with a code", INVALID)},
    409: {"frozen": Example("Refused by the account's state", FROZEN)},
    422: {"key_reused": Example("The key named another body", KEY_REUSED)},
}

# --- POST /admin/points/{user_id}/adjust ---------------------------------------------------

ADJUST_BODIES = {
    "award": Example(
        "Award points that expire",
        {"amount": 100, "reason": "Check-in reward", "source": "daily_checkin",
         "expires_at": "2030-06-30T00:00:00Z"},
    ),
    "spend": Example(
        "Spend points: refused if the balance would go below zero",
        {"amount": -30, "reason": "redeemed a voucher", "related_id": "order-1042",
         "idempotency_key": "order-1042-redeem"},
    ),
    "adjust": Example(
        "An admin's correction that may take the balance below zero",
        {"amount": -20, "reason": "chargeback", "points_type": "points",
         "allow_negative_balance": True},
    ),
}  # fmt: skip
POINTS_ACCOUNT = {
    "id": ACCOUNT, "tenant_id": TENANT, "user_id": "usr_42", "points_type": "points",
    "balance": 100, "frozen_balance": 0, "expired_points": 0, "total_earned": 100,
    "total_spent": 0, "exchange_rate": 100, "status": "active", "version": 1,
    "created_at": "2026-04-15T10:30:00.802781Z", "updated_at": "2026-04-15T10:30:00.830370Z",
}  # fmt: skip
AWARD = {
    "id": "01M8ZJ4BZH6M2QSRVZBEMXTYS8", "account_id": ACCOUNT, "user_id": "usr_42",
    "amount": 100, "balance_before": 0, "balance_after": 100, "type": "adjust",
    "status": "completed", "reason": "Check-in reward", "description": "Check-in reward",
    "source": "daily_checkin", "related_id": "", "idempotency_key": "checkin-2026-04-15",
    "expires_at": "2030-06-30T00:00:00Z", "created_at": "2026-04-15T10:30:00.832970Z",
    "updated_at": "2026-04-15T10:30:00.830370Z",
}  # fmt: skip
SPEND = AWARD | {
    "id": None, "amount": -30, "balance_before": None, "balance_after": None,
    "status": "queued", "reason": "redeemed a voucher", "description": "redeemed a voucher",
    "source": "", "related_id": "order-1042", "idempotency_key": "order-1042-redeem",
    "expires_at": None, "created_at": "2026-04-15T10:30:01.889362Z",
    "updated_at": "2026-04-15T10:30:01.889362Z",
}  # fmt: skip
ADJUST_ANSWERS: Mapping[int, Mapping[str, Example]] = {
    201: {
        "applied": Example(
            "Applied: the account after it, and its transaction",
            {"code": 0, "message": "completed", "timestamp": "2026-04-15T10:30:00.883420Z",
             "data": {"account": POINTS_ACCOUNT, "transaction": AWARD}},
        )
    },
    202: {
        "accepted": Example(
            "Accepted, not applied yet: the transaction has no id nor balances",
            {"code": 0, "message": "accepted", "timestamp": "2026-04-15T10:30:01.902892Z",
             "data": {"account": POINTS_ACCOUNT, "transaction": SPEND}},
        )
    },
    400: {
        "invalid": Example(
            "The fields at fault; `reason` says what kind of refusal",
            _refused(400, "the request has invalid fields", "validation",
                     errors=[{"field": "amount", "code": "zero", "message": "must not be 0"}]),
        )
    },
    409: {
        "insufficient_balance": Example(
            "Refused by the worker: `reason` says why, `request_id` names the request",
            _refused(409, "the balance may not go below zero, nor below the points held, for"
                     " this points type", "insufficient_balance", request_id=6),
        )
    },
}  # fmt: skip

# --- POST /admin/points/{user_id}/holds ----------------------------------------------------

HOLD_BODIES = {
    "order": Example(
        "Hold points for an order until it ships (released at `expires_at` if still open)",
        {"amount": 30, "expires_at": "2030-12-01T12:00:00Z", "reason": "order 1042",
         "idempotency_key": "order-1042-hold"},
    )
}  # fmt: skip
HOLD_ANSWERS: Mapping[int, Mapping[str, Example]] = {
    201: {
        "placed": Example(
            "Placed: 30 points moved from spendable to frozen_balance",
            {"code": 0, "message": "completed", "timestamp": "2026-04-15T10:31:00.987389Z",
             "data": {
                 "account": POINTS_ACCOUNT | {"balance": 70, "frozen_balance": 30,
                                              "total_spent": 30, "version": 3},
                 "transaction": AWARD | {
                     "id": "01M8ZJ4C3JWD7D939GEHG8TW6K", "amount": 0, "balance_before": 70,
                     "balance_after": 70, "type": "hold", "reason": "order 1042",
                     "description": "order 1042", "source": "", "related_id": "7",
                     "idempotency_key": "order-1042-hold",
                     "expires_at": "2030-12-01T12:00:00Z",
                 },
                 "hold": {"id": 7, "account_id": ACCOUNT, "amount": 30, "captured": 0,
                          "status": "open", "expires_at": "2030-12-01T12:00:00Z",
                          "created_at": "2026-04-15T10:31:00.959357Z", "closed_at": None},
             }},
        )
    }
}  # fmt: skip

# --- POST /api/v2/score/bulk ---------------------------------------------------------------

BULK_BODIES = {
    "contest": Example(
        "A contest's awards: batch-wide context, an item with a key of its own",
        {"items": [{"username": "mario.rossi", "score": 5},
                   {"user_id": 3, "score": 3, "comment": "second prize",
                    "idempotency_key": "spring-contest:luigi"}],
         "reputation_context": "contest|spring|apis", "comment": "spring contest"},
    )
}  # fmt: skip
BULK_ANSWERS: Mapping[int, Mapping[str, Example]] = {
    202: {
        "accepted": Example(
            "Stored as one batch; follow it at its Location",
            {"id": "01M8ZJ4C4K0PEZHP8RJFFEWVC5", "status": "queued", "total": 2,
             "replayed": 0, "counts": {"queued": 2, "processing": 0, "completed": 0,
                                       "rejected": 0},
             "created_at": "2026-04-15T10:32:00.991312Z", "completed_at": None,
             "progress": 0.0},
        )
    },
    400: {
        "invalid_items": Example(
            "Nothing written: the items at fault, by index",
            _problem(400, "Bad Request", "validation", "1 item is invalid; nothing was written",
                     error_count=1,
                     errors_by_item=[{"index": 1, "field": "score", "code": "zero",
                                      "message": "must not be 0"}],
                     errors=[{"field": "score", "code": "zero", "message": "must not be 0"}]),
        )
    },
}  # fmt: skip

# --- reads ---------------------------------------------------------------------------------

LEADERBOARD_ANSWERS: Mapping[int, Mapping[str, Example]] = {
    200: {
        "week": Example(
            "This week's board (`period=week&limit=2`)",
            {"count": 14, "next": "/api/v2/score/leaderboard/?period=week&limit=2&offset=2",
             "previous": None,
             "results": [
                 {"user_id": 2, "user__username": "mario.rossi",
                  "user__real_name": "Mario Rossi", "total_score": 25, "rank": 1},
                 {"user_id": 3, "user__username": "luigi", "user__real_name": "Luigi Verdi",
                  "total_score": 18, "rank": 2},
             ],
             "period": {"period": "week", "starts": "2026-04-13",
                        "from": "2026-04-13T00:00:00Z", "to": "2026-04-20T00:00:00Z"}},
        )
    }
}  # fmt: skip
BALANCES_ANSWERS: Mapping[int, Mapping[str, Example]] = {
    200: {
        "accounts": Example(
            "A user's accounts, one per points type",
            {"code": 0, "message": "ok", "timestamp": "2026-04-15T10:33:00.053111Z",
             "data": [
                 POINTS_ACCOUNT | {"balance": 70, "frozen_balance": 30, "total_spent": 30,
                                   "version": 3},
                 POINTS_ACCOUNT | {"id": "01M8ZJ4BNB0CENSAD1XTCNHBXQ",
                                   "points_type": "reputation", "balance": 7,
                                   "total_earned": 10, "total_spent": 3, "exchange_rate": 1,
                                   "version": 2},
             ]},
        )
    }
}  # fmt: skip

# --- users ---------------------------------------------------------------------------------

USER_BODIES = {
    "user": Example(
        "A user that the points routes can name by its external_id",
        {"username": "luigi", "external_id": "usr_43", "real_name": "Luigi Verdi",
         "email": "luigi@example.com", "role": "user"},
    )
}  # fmt: skip
USER_ANSWERS: Mapping[int, Mapping[str, Example]] = {
    201: {
        "created": Example(
            "The new user",
            {"id": 4, "username": "luigi", "external_id": "usr_43", "real_name": "Luigi Verdi",
             "email": "luigi@example.com", "avatar": "", "description": "", "role": "user",
             "reputation": 0},
        )
    },
    409: {
        "taken": Example(
            "The username is another user's",
            _problem(409, "Conflict", "conflict", "the user exists",
                     errors=[{"field": "username", "code": "taken",
                              "message": "another user has this username"}]),
        )
    },
}  # fmt: skip
