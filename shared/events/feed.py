"""The pull feed's query (GET /api/v2/events): a tenant's numbered events past a cursor,
of some types or of one account; errors named by parameter."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from shared.events.log import EVENT_TYPES
from shared.fields import BIGINT_MAX, integer_within, is_blank, text_parser
from shared.reads.query_params import DEFAULT_LIMIT, Limit

ACCOUNT_ID_MAX = 26  # accounts.id, a ULID


def _parse_after(value: Any) -> Any:
    number = integer_within(0, BIGINT_MAX)(value)
    return 0 if number is None else number


def _parse_types(value: Any) -> Any:
    """A comma-separated list of EVENT_TYPES (blank: every type)."""
    if is_blank(value):
        return ()
    if not isinstance(value, str):
        raise PydanticCustomError("string", "must be a comma-separated list of event types")
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    unknown = [name for name in names if name not in EVENT_TYPES]
    if unknown:
        raise PydanticCustomError(
            "unknown", "unknown event types: {unknown}", {"unknown": ", ".join(unknown)}
        )
    return names


After = Annotated[
    int,
    Field(description="the cursor: events with a greater id (0, the default: from the start)"),
    BeforeValidator(_parse_after),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": BIGINT_MAX}),
]


def _no_default(schema: dict[str, Any]) -> None:
    """The default is the parsed value (no types), not a value to send."""
    schema.pop("default", None)


Types = Annotated[
    tuple[str, ...],
    Field(
        description="comma-separated event types (default: every type)",
        json_schema_extra=_no_default,
    ),
    BeforeValidator(_parse_types),
    WithJsonSchema({"type": "string", "examples": ["entry.created,balance.crossed"]}),
]
AccountId = Annotated[
    str | None,
    Field(description="only the events of this account"),
    text_parser(ACCOUNT_ID_MAX),
    WithJsonSchema({"type": ["string", "null"], "maxLength": ACCOUNT_ID_MAX}),
]


class EventsQuery(BaseModel):
    """GET /api/v2/events: events past `after`, in id order."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    after: After = 0
    types: Types = ()
    account: AccountId = None
    limit: Limit = DEFAULT_LIMIT
