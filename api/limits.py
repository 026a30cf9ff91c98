"""Rate limits (the `limits` library, in Redis): requests per token, failed logins per address.

Every request with a valid bearer token counts against that token's limit
(`TALLY_RATE_LIMIT`); every request with a bad token (whatever the route answers,
404 and 405 included) and every 401 counts against the client address's limit
(`TALLY_AUTH_FAILURE_LIMIT`), and an address past it may try no further token
until the window ends, so guessing tokens is slow. The address's limit is tested
before the token is looked up, so a guesser past it costs no database query. Past
either limit the answer is a 429 problem with Retry-After. A token this process
has seen valid is not held to the address's failures: users behind one address
are not locked out by a guesser (a token new to the process is, until the window
ends). A token's requests are counted in Redis in batches (see `TokenCounts`), so an
accepted request costs an eighth of a Redis round trip here.

`limits` (the library Flask-Limiter is built on) is called directly: Flask-Limiter's
per-request machinery cost as much CPU as the accept statement. When Redis is
unreachable the limits are counted in this process's memory instead: accepting
work must not depend on Redis (the outbox relay hands on what could not be).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import cached_property

from flask import Flask, Response, g, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from api.auth import bearer_token
from api.problems import Problem
from api.resources import token_cache
from api.structured import rate_limit_fields
from shared.intake.auth import hash_token
from shared.platform.config import Settings

LIMITS_EXTENSION = "tally.limits"
# Routes that answer without a token and must stay cheap and always reachable.
UNLIMITED_BLUEPRINTS = frozenset({"health", "openapi", "metrics"})

log = logging.getLogger(__name__)


class TokenCounts:
    """Each process hands a token's requests to Redis in batches of BATCH, as one hit of cost
    BATCH; once a count shows the token within reach of its limit, every request of it is
    counted on its own until its window ends, so the limit holds exactly where it matters.

    The cost: far from its limit a token may have up to BATCH - 1 requests per process
    not yet counted in Redis. The gain: one round trip per BATCH requests, not per request.
    """

    BATCH = 8

    def __init__(self, batch: int = BATCH) -> None:
        self.batch = batch
        self._lock = threading.Lock()
        self._uncounted: dict[str, int] = {}
        self._exact_until: dict[str, float] = {}

    def take(self, token: str) -> int:
        """How many of the token's requests to count now (0: none yet, this one included)."""
        with self._lock:
            uncounted = self._uncounted.get(token, 0) + 1
            exact = self._exact_until.get(token, 0.0) > time.time()
            if uncounted < self.batch and not exact:
                self._uncounted[token] = uncounted
                return 0
            self._uncounted.pop(token, None)
            return uncounted

    def uncounted(self, token: str) -> int:
        """The token's requests this process has not counted in Redis yet."""
        return self._uncounted.get(token, 0)

    def near(self, token: str, until: float) -> None:
        """Count the token's requests one by one until `until` (a Unix time)."""
        with self._lock:
            if len(self._exact_until) > 10_000:
                self._exact_until.clear()
            self._exact_until[token] = until


class RateLimits:
    """The configured limits, counted in Redis (or this process's memory when Redis fails)."""

    def __init__(self, settings: Settings, key_prefix: Callable[[], str]) -> None:
        self.settings = settings
        self.key_prefix = key_prefix
        self.per_token = parse_many(settings.rate_limit)
        self.auth_failures = parse_many(settings.auth_failure_limit)
        self.local = FixedWindowRateLimiter(MemoryStorage())
        # Within this many requests of a token's limit, count each request on its own;
        # a limit too small to be worth batching is counted request by request.
        self.near_margin = 2 * TokenCounts.BATCH * settings.api_processes
        smallest = min((limit.amount for limit in self.per_token), default=0)
        batch = TokenCounts.BATCH if smallest >= 10 * self.near_margin else 1
        self.token_counts = TokenCounts(batch)
        # Per token: the requests left in the tightest limit at its last count in Redis,
        # and when its window ends; the RateLimit field is told from it (see `state`).
        self.windows: dict[str, tuple[int, int, float]] = {}

    @cached_property
    def shared(self) -> FixedWindowRateLimiter:
        """The counts in Redis, under the deployment's prefix (read on first use; a failure
        to read it counts in memory, like a failure of Redis, and is tried again)."""
        uri, options = self.settings.redis.limits_storage()
        storage = storage_from_string(
            uri, key_prefix=self.key_prefix(), socket_timeout=1, socket_connect_timeout=1,
            **options,
        )  # fmt: skip
        return FixedWindowRateLimiter(storage)

    def hit_token(self, token: str) -> RateLimitItem | None:
        """Count a request of the token (in a batch, see TokenCounts); the limit it breaks."""
        cost = self.token_counts.take(token)
        if cost == 0:
            return None
        broken = self._first_broken(self.per_token, ("token", token), count=True, cost=cost)
        tightest: tuple[int, int, float] | None = None
        for index, limit in enumerate(self.per_token):
            try:
                stats = self.shared.get_window_stats(limit, "token", token)
            except Exception:  # Redis is down: _first_broken counted locally meanwhile
                return broken
            if stats.remaining < self.near_margin:
                self.token_counts.near(token, stats.reset_time)
            if tightest is None or stats.remaining < tightest[1]:
                tightest = (index, stats.remaining, stats.reset_time)
        if tightest is not None:
            if len(self.windows) > 10_000:
                self.windows.clear()
            self.windows[token] = tightest
        return broken

    def state(self, token: str) -> dict[str, str]:
        """The RateLimit fields of a token's answer: the tightest of its limits as last
        counted in Redis, less this process's requests not counted yet. An estimate
        within TokenCounts.BATCH requests a process, exact near the limit, where every
        request is counted."""
        index, remaining, reset_at = self.windows.get(token, (0, -1, 0.0))
        limit = self.per_token[index]
        now = time.time()
        if reset_at <= now:  # not counted yet in this window: all of it is left
            remaining, reset_at = limit.amount, now + limit.get_expiry()
        remaining -= self.token_counts.uncounted(token)
        return self.fields(self.per_token, index, remaining, math.ceil(reset_at - now), "token")

    @staticmethod
    def fields(
        limits: list[RateLimitItem], index: int, remaining: int, reset: int, name: str
    ) -> dict[str, str]:
        """RateLimit and RateLimit-Policy for the `index`th of `limits`."""
        limit = limits[index]
        policy = name if len(limits) == 1 else f"{name}-{index + 1}"
        return rate_limit_fields(policy, limit.amount, limit.get_expiry(), remaining, reset)

    def hit(self, limits: list[RateLimitItem], *identity: str) -> RateLimitItem | None:
        """Count one request; the first limit it breaks, if any."""
        return self._first_broken(limits, identity, count=True)

    def test(self, limits: list[RateLimitItem], *identity: str) -> RateLimitItem | None:
        """The first limit already used up, without counting a request."""
        return self._first_broken(limits, identity, count=False)

    def _first_broken(
        self,
        limits: list[RateLimitItem],
        identity: tuple[str, ...],
        *,
        count: bool,
        cost: int = 1,
    ) -> RateLimitItem | None:
        for limit in limits:
            try:
                allowed = self._check(self.shared, limit, identity, count, cost)
            except Exception as error:  # redis-py raises many kinds; count locally meanwhile
                log.warning("rate limits counted in memory: Redis failed (%s)", error)
                allowed = self._check(self.local, limit, identity, count, cost)
            if not allowed:
                return limit
        return None

    @staticmethod
    def _check(
        limiter: FixedWindowRateLimiter,
        limit: RateLimitItem,
        identity: tuple[str, ...],
        count: bool,
        cost: int,
    ) -> bool:
        if count:
            return limiter.hit(limit, *identity, cost=cost)
        return limiter.test(limit, *identity, cost=cost)

    def too_many(
        self, limits: list[RateLimitItem], limit: RateLimitItem, *identity: str
    ) -> Problem:
        """The 429 for a broken limit (one of `limits`), with the seconds until its
        window ends, in Retry-After and the RateLimit fields."""
        try:
            reset_at = self.shared.get_window_stats(limit, *identity).reset_time
        except Exception:  # as above: the window's end is then an estimate
            reset_at = time.time() + limit.get_expiry()
        retry_after = max(1, math.ceil(reset_at - time.time()))
        fields = self.fields(limits, limits.index(limit), 0, retry_after, identity[0])
        return Problem(
            429,
            "too-many-requests",
            f"more than {limit} requests; retry after {retry_after} s",
            headers={"Retry-After": str(retry_after)} | fields,
        )


def _client_address() -> str:
    return request.remote_addr or "unknown"


def init_limits(app: Flask, settings: Settings, key_prefix: Callable[[], str]) -> RateLimits:
    """Check the per-token and per-address limits before every limited route."""
    limits = RateLimits(settings, key_prefix)
    app.extensions[LIMITS_EXTENSION] = limits

    @app.before_request
    def _limit() -> None:
        if request.blueprint in UNLIMITED_BLUEPRINTS:
            return
        token, tokens = bearer_token(), token_cache()
        if not (token and tokens.was_valid(token)):
            # Before any lookup: an address past its failures costs no database query.
            address = _client_address()
            broken = limits.test(limits.auth_failures, "auth-failures", address)
            if broken is not None:
                raise limits.too_many(limits.auth_failures, broken, "auth-failures", address)
        if token and tokens.principal(token) is not None:
            # The token's hash, never the token: the key is stored in Redis.
            token_hash = hash_token(token)
            broken = limits.hit_token(token_hash)
            if broken is not None:
                raise limits.too_many(limits.per_token, broken, "token", token_hash)
            g.rate_limit = limits.state(token_hash)
        elif token:
            # A bad token is a failure whatever the route answers (404, 405, OPTIONS...).
            g.auth_failure_counted = True
            limits.hit(limits.auth_failures, "auth-failures", _client_address())

    @app.after_request
    def _count_failures(response: Response) -> Response:
        if "rate_limit" in g:
            response.headers.update(g.rate_limit)
        if (
            response.status_code == 401
            and request.blueprint not in UNLIMITED_BLUEPRINTS
            and "auth_failure_counted" not in g
        ):
            limits.hit(limits.auth_failures, "auth-failures", _client_address())
        return response

    return limits
