"""Rate limits (Flask-Limiter, counted in Redis): requests per token, failed logins per address.

Every request that carries a bearer token counts against that token's limit
(`TALLY_RATE_LIMIT`); every 401 counts against the client address's limit
(`TALLY_AUTH_FAILURE_LIMIT`), so guessing tokens is slow. Past either limit the
answer is a 429 problem with Retry-After. When Redis is unreachable the limits
are counted in each process's memory instead: accepting work must not depend on
Redis (the outbox relay publishes what could not be published).
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, request
from flask_limiter import ApplicationLimit, Limiter, RequestLimit

from api.auth import bearer_token
from shared.auth import hash_token
from shared.config import Settings

KEY_PREFIX = "tally:limits"


def _token_key() -> str:
    # The token's hash, never the token: the key is stored in Redis.
    return hash_token(bearer_token())


def _client_address() -> str:
    return request.remote_addr or "unknown"


def _breached(limit: RequestLimit) -> Response:
    """Carries Retry-After on the 429; api.problems renders the body for the route's envelope."""
    reset_at, _ = limit.window
    retry_after = max(1, math.ceil(reset_at - time.time()))
    return Response(status=429, headers={"Retry-After": str(retry_after)})


def init_limits(app: Flask, settings: Settings) -> Limiter:
    """Attach the per-token and per-address limits to every route of `app`."""
    return Limiter(
        key_func=_token_key,
        app=app,
        application_limits=[
            ApplicationLimit(
                settings.rate_limit,
                key_function=_token_key,
                scope="token",
                exempt_when=lambda: not bearer_token(),
            ),
            ApplicationLimit(
                settings.auth_failure_limit,
                key_function=_client_address,
                scope="auth-failures",
                deduct_when=lambda response: response.status_code == 401,
            ),
        ],
        storage_uri=settings.redis_url,
        storage_options={"socket_timeout": 1, "socket_connect_timeout": 1},
        strategy="fixed-window",
        key_prefix=KEY_PREFIX,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        on_breach=_breached,
    )
