"""tally's configuration: one typed object, read from TALLY_* environment variables
(pydantic-settings). A value that does not parse is an error that names its variable; a
TALLY_* variable that names no setting is warned about, with the nearest setting's name."""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.platform.redis_url import RedisTarget

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/tally"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# prometheus_client's folder of per-process sample files, read when it is first imported.
METRICS_FOLDER_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The file in that folder that names the process group's first process.
GROUP_ROOT_FILE = "group.pid"


@dataclass(frozen=True)
class Cap:
    """At most `amount` points a period (`day` or `week`, in the tenant's time zone) from
    positive adjustments, except those whose context or source is exempt (docs/periods.md).

    Beyond it an adjustment is cut to what is left (`over="cut"`) or rejected
    (`over="reject"`); either way one with nothing left is rejected with `cap_reached`.
    """

    amount: int
    per: str = "day"
    over: str = "cut"
    # Whole leading segments of a reputation_context (`answer|accepted`), and sources.
    exempt_contexts: tuple[str, ...] = ()
    exempt_sources: tuple[str, ...] = ()

    def exempts(self, context: str, source: str) -> bool:
        return source in self.exempt_sources or any(
            context == prefix or context.startswith(prefix + "|") for prefix in self.exempt_contexts
        )


CAP_PERIODS = ("day", "week")
CAP_OVERS = ("cut", "reject")


@dataclass(frozen=True)
class PointsType:
    """How one kind of points behaves: may it go negative, and what is it worth."""

    name: str
    allow_negative: bool
    exchange_rate: int
    # Days before a lot expires that a `lot.expiring` event is written (once per lot);
    # 0: none.
    expiry_warning_days: int = 0
    # Balances whose crossing (up or down) writes a `balance.crossed` event.
    balance_thresholds: tuple[int, ...] = ()
    cap: Cap | None = None


DEFAULT_POINTS_TYPES: Mapping[str, PointsType] = {
    "reputation": PointsType("reputation", allow_negative=True, exchange_rate=1),
    "points": PointsType("points", allow_negative=False, exchange_rate=100),
    "cash_equivalent": PointsType("cash_equivalent", allow_negative=False, exchange_rate=100),
}


PREFIX = "TALLY_"
# TALLY_* variables that are not the services' settings: the CLI's own (README, "Running
# it for real"), and the test suite's and benchmarks' (README, "Tests").
OTHER_VARIABLES = frozenset({"TALLY_URL", "TALLY_TOKEN", "TALLY_ENV_FILE", "TALLY_USER_REF"})
OTHER_PREFIXES = ("TALLY_TEST_", "TALLY_BENCH_", "TALLY_MODEL_", "TALLY_CHAOS_", "TALLY_CONTRACT_")

log = logging.getLogger(__name__)


class ConfigurationError(ValueError):
    """TALLY_* variables whose values do not parse; the message names each one."""


class Settings(BaseSettings):
    """Everything tally can be told; each field maps to TALLY_<FIELD> in the environment."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="forbid")

    # One host, or several for a replicated cluster: libpq's multi-host form
    # (`...@/tally?host=db1:5432&host=db2:5432&target_session_attrs=read-write`).
    database_url: str = DEFAULT_DATABASE_URL
    # psycopg prepares a statement on a connection once it has run five times there. Off
    # behind a transaction-mode PgBouncer older than 1.21, whose server connections do not
    # follow a client's session (README, "Through PgBouncer").
    database_prepared_statements: bool = True
    # Streaming replicas for the routes that only read (lists, boards, statements, the
    # export), separated by spaces; a replica further behind the primary than
    # read_max_lag seconds is not used (shared.platform.replicas). Empty: the primary.
    read_database_url: str = ""
    read_max_lag: float = 5.0
    # redis://..., or redis+sentinel://host:port,.../master[/db] (shared.platform.redis_url).
    redis_url: str = DEFAULT_REDIS_URL
    # Whether an acknowledgement (201/202) needs the commit on a synchronous standby too:
    # "none" (one database host), "required" (while no synchronous standby streams, the
    # API answers 503 and /readyz says why) or "preferred" (acknowledge anyway; /readyz
    # and tally_replication_synchronous say acknowledgements are not replicated).
    replication: Literal["none", "required", "preferred"] = "none"
    # How long POST waits for the worker before answering 202 (seconds).
    default_wait: float = 5.0
    # Upper bound a client may ask for with `Prefer: wait=N`.
    max_wait: float = 30.0
    # A request still queued this long after acceptance is re-published by the relay.
    relay_delay: float = 30.0
    relay_interval: float = 10.0
    # How often beat asks the workers to expire due lots and to release timed-out holds:
    # points stay spendable, and holds open, up to this long past their time.
    expiry_interval: float = 60.0
    # The per-account Redis lock: its TTL and how long a task waits to take it.
    lock_ttl: float = 30.0
    lock_wait: float = 10.0
    # How often beat has the tables whose rows changed by a tenth since their last ANALYZE
    # analyzed, and the period totals vacuumed once a hundredth of their rows are dead
    # (shared.platform.statistics), for databases where autovacuum does not or runs
    # behind the writes; 0: never.
    analyze_interval: float = 60.0
    # How many pending requests one account transaction applies at most.
    apply_chunk: int = 5000
    max_amount: int = 1_000_000_000
    max_body_bytes: int = 64 * 1024
    # The bulk routes (CSV import, JSON/NDJSON bulk) have limits of their own.
    bulk_max_body_bytes: int = 64 * 1024 * 1024
    bulk_max_items: int = 100_000
    default_points_type: str = "reputation"
    # The points type of seed 002's routes when the body names none.
    points_default_type: str = "points"
    points_types: Annotated[Mapping[str, PointsType], NoDecode] = Field(
        default_factory=lambda: DEFAULT_POINTS_TYPES
    )
    # The Celery queue of single adjustments; bulk and the relay use `<queue_name>.bulk` and
    # `<queue_name>.relay` (see shared.flow.dispatch.Lane).
    queue_name: str = "tally"
    # Bulk drain tasks that may run at once (on distinct accounts): give the bulk workers
    # at least this much concurrency in all.
    bulk_partitions: int = 2
    # The API server: address, processes, threads per process, access log.
    bind: str = "127.0.0.1:8000"
    api_processes: int = 2
    api_threads: int = 16
    # Off by default: a front proxy usually logs requests, and this log cost a tenth of the
    # API's CPU per adjustment; every accepted adjustment is logged by tally either way.
    access_log: bool = False
    # The URL clients reach the API at (e.g. "https://tally.example.com"), for the absolute
    # links in answers; empty: links are relative. Never taken from the Host header.
    public_url: str = ""
    # Where a worker serves its own /metrics (its pool's samples); empty: not served.
    metrics_bind: str = "127.0.0.1:9808"
    # Requests of one API process that may wait for the worker at once; beyond it a POST
    # answers 202 at once, so waiting never takes the threads that serve everything else.
    max_waiters: int = 12
    # Requests one client address may have in flight per API process (reading its body or
    # being served); beyond it a 429 at once. Behind a proxy every request has the
    # proxy's address: raise it there and cap clients at the proxy.
    max_requests_per_address: int = 256
    # Database connections per process (0: one per API thread plus four, for token checks
    # and the metrics scrape); a thread that waits longer than the timeout for one gets a
    # 503 with Retry-After. An accepting thread holds one connection at a time.
    db_pool_size: int = 0
    db_pool_timeout: float = 5.0
    # Per-token request rate, and failed authentications per client address
    # (limits notation: "N/second", "N/minute", several separated by ";").
    rate_limit: str = "3000/second"
    # How long the API trusts a token it has checked: a revocation takes effect within it.
    token_cache_seconds: float = 1.0
    auth_failure_limit: str = "30/minute"
    # The event log (docs/events.md): how often beat numbers new events and hands them
    # to the webhook and stream consumers (the commit-to-delivery lag is about this
    # plus the delivery), and how long events are kept.
    events_interval: float = 0.25
    events_retention_days: int = 30
    # The idempotency window (docs/storage.md): an adjustment's request row, and so its
    # key and its status URL, are kept this many days after it was accepted, then
    # deleted; a key sent again after that is a new adjustment. 0 keeps them forever.
    idempotency_window_days: int = Field(default=30, ge=0)
    # Webhooks: the receiver's time to answer, how long a delivery is retried before it
    # is kept as failed, and how long an endpoint may fail (no 2xx at all) before it is
    # disabled. Receivers on private, loopback or link-local addresses are refused
    # unless allowed (tests and single-machine setups).
    webhook_timeout: float = 5.0
    # Deliveries in flight at once per endpoint run, each account's queue on one thread:
    # an endpoint's rate is at most this many over its receiver's answer time.
    webhook_sender_threads: int = Field(default=16, ge=1, le=256)
    webhook_retry_hours: float = 72.0
    webhook_disable_after_hours: float = 120.0
    webhook_allow_private: bool = False
    # A failed delivery is retried after a random delay between the base and
    # base * 2^attempts, at most the cap (seconds).
    webhook_backoff_base: float = 5.0
    webhook_backoff_cap: float = 3600.0
    # NATS JetStream (e.g. "nats://127.0.0.1:4222"): events are also published there, one
    # subject per tenant and type under `<nats_subject_prefix>.`; empty: not streamed.
    nats_url: str = ""
    nats_stream: str = "TALLY_EVENTS"
    nats_subject_prefix: str = "tally.events"

    @model_validator(mode="before")
    @classmethod
    def _strip(cls, values: Any) -> Any:
        """` yes ` is `yes`: spaces around a value (an env file's) are never meant."""
        if not isinstance(values, Mapping):
            return values
        return {k: v.strip() if isinstance(v, str) else v for k, v in values.items()}

    @field_validator("redis_url")
    @classmethod
    def _redis_target(cls, value: str) -> str:
        RedisTarget.parse(value)  # its ValueError says what is wrong
        return value

    @field_validator("points_types", mode="before")
    @classmethod
    def _points_types_from_json(cls, value: Any) -> Any:
        return _parse_points_types(value) if isinstance(value, str) else value

    @property
    def redis(self) -> RedisTarget:
        return RedisTarget.parse(self.redis_url)

    @property
    def read_database_urls(self) -> list[str]:
        return self.read_database_url.split()

    @property
    def pool_size(self) -> int:
        return self.db_pool_size or self.api_threads + 4

    def points_type(self, name: str) -> PointsType | None:
        return self.points_types.get(name)

    @property
    def caps(self) -> dict[str, Cap]:
        """The caps of the points types that have one, by points type."""
        return {name: kind.cap for name, kind in self.points_types.items() if kind.cap}

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        unknown = set(overrides) - set(type(self).model_fields)
        if unknown:
            raise TypeError(f"no such settings: {sorted(unknown)}")
        return self.model_copy(update=overrides)


def host_port(bind: str) -> tuple[str, int]:
    """("127.0.0.1", 8000) from "127.0.0.1:8000", ("::1", 8000) from "[::1]:8000"."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def _parse_points_types(raw: str) -> dict[str, PointsType]:
    """Parse `{"name": {"allow_negative": bool, "exchange_rate": int,
    "expiry_warning_days": int, "balance_thresholds": [int, ...], "cap": {"amount": int,
    "per": "day"|"week", "over": "cut"|"reject", "exempt_contexts": [str, ...],
    "exempt_sources": [str, ...]}}, ...}`."""
    parsed = json.loads(raw)
    return {
        name: PointsType(
            name,
            allow_negative=bool(spec.get("allow_negative", False)),
            exchange_rate=int(spec.get("exchange_rate", 1)),
            expiry_warning_days=int(spec.get("expiry_warning_days", 0)),
            balance_thresholds=tuple(sorted(int(t) for t in spec.get("balance_thresholds", ()))),
            cap=_parse_cap(name, spec["cap"]) if spec.get("cap") else None,
        )
        for name, spec in parsed.items()
    }


def _parse_cap(points_type: str, spec: Mapping[str, Any]) -> Cap:
    cap = Cap(
        amount=int(spec["amount"]),
        per=str(spec.get("per", "day")),
        over=str(spec.get("over", "cut")),
        exempt_contexts=tuple(str(c) for c in spec.get("exempt_contexts", ())),
        exempt_sources=tuple(str(s) for s in spec.get("exempt_sources", ())),
    )
    if cap.amount <= 0 or cap.per not in CAP_PERIODS or cap.over not in CAP_OVERS:
        raise ValueError(
            f"the cap of {points_type!r}: amount > 0, per one of {CAP_PERIODS},"
            f" over one of {CAP_OVERS}"
        )
    return cap


def load_settings() -> Settings:
    """Settings from the environment (TALLY_DATABASE_URL, TALLY_REDIS_URL, ...)."""
    _warn_unknown(name for name in os.environ if name.startswith(PREFIX))
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigurationError(
            "; ".join(
                f"{PREFIX}{str(problem['loc'][0]).upper()}: {problem['msg']}"
                f" (got {problem['input']!r})"
                for problem in error.errors(include_url=False)
            )
        ) from None


def _warn_unknown(given: Iterable[str]) -> None:
    """Warn of each TALLY_* variable that names no setting (a typo that would otherwise
    leave the default in force without a word)."""
    settings = [name.upper() for name in Settings.model_fields]
    known = {PREFIX + name for name in settings} | OTHER_VARIABLES
    for name in sorted(set(given) - known):
        if not name.startswith(OTHER_PREFIXES):
            nearest = difflib.get_close_matches(name.removeprefix(PREFIX), settings, 1, 0.75)
            _warn_once(name, PREFIX + nearest[0] if nearest else None)


@functools.cache
def _warn_once(name: str, nearest: str | None) -> None:
    hint = f"; did you mean {nearest}?" if nearest else ""
    log.warning("%s is not a tally setting and is ignored%s", name, hint)
