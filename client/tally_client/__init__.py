"""tally's Python client: `Client` (blocking) and `AsyncClient` (asyncio), httpx only.

Every call retries transient failures (no connection, a timeout, 429, 502, 503,
504) with one idempotency key, generated once per call when none is given, so a
retry never creates a second adjustment; Retry-After is honoured and every
request has a timeout. Error answers raise a TallyError subclass per problem type.
"""

from tally_client.async_client import AsyncClient
from tally_client.client import Client
from tally_client.errors import (
    Conflict,
    ContentTooLarge,
    FieldError,
    Forbidden,
    KeyReused,
    NotFound,
    RateLimited,
    Rejected,
    ServerError,
    TallyError,
    Unauthorized,
    Unavailable,
    Unreachable,
    UnsupportedMediaType,
    ValidationError,
    WaitTimeout,
)
from tally_client.feed import AsyncEventFeed, EventFeed
from tally_client.models import (
    BatchStatus,
    BulkPlan,
    Event,
    Hold,
    LeaderboardPage,
    OwnRank,
    Period,
    Ranked,
    ReputationType,
    RequestStatus,
    Score,
    Standing,
    StatementEntry,
    StatementPage,
    Submission,
    Transaction,
    User,
)
from tally_client.retries import Retries
from tally_client.webhooks import WebhookVerificationError, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncEventFeed",
    "BatchStatus",
    "BulkPlan",
    "Client",
    "Conflict",
    "ContentTooLarge",
    "Event",
    "EventFeed",
    "FieldError",
    "Forbidden",
    "Hold",
    "KeyReused",
    "LeaderboardPage",
    "NotFound",
    "OwnRank",
    "Period",
    "Ranked",
    "RateLimited",
    "Rejected",
    "ReputationType",
    "RequestStatus",
    "Retries",
    "Score",
    "ServerError",
    "Standing",
    "StatementEntry",
    "StatementPage",
    "Submission",
    "TallyError",
    "Transaction",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "UnsupportedMediaType",
    "User",
    "ValidationError",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]
