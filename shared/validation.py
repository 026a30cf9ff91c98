"""Validation of adjustment input: one pydantic model per input shape, errors named by field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

INTEGER_PATTERN = re.compile(r"-?[0-9]+")
CONTEXT_MAX = 255
COMMENT_MAX = 2000
USERNAME_MAX = 150
IDEMPOTENCY_KEY_MAX = 255
SHORT_TEXT_MAX = 255
# Ids are BIGINT columns: a larger number names nothing (and must not reach the database).
BIGINT_MAX = 2**63 - 1

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class FieldError:
    """One reason a field was refused: `{field, code, message}` in problem+json."""

    field: str
    code: str
    message: str


class InvalidInput(Exception):
    """Input that cannot be accepted; carries every field error found."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


def _check_text(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("invalid_character", "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "invalid_character", "must not contain unpaired surrogates"
        ) from None
    return value


def _blank_to_none(value: Any) -> Any:
    """Empty or whitespace-only strings count as absent."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def parse_integer(value: Any) -> int | None:
    """A JSON integer or a string of ASCII digits with an optional minus; nothing else."""
    value = _blank_to_none(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError("integer", "must be an integer")
    if isinstance(value, str):
        if not INTEGER_PATTERN.fullmatch(value):
            raise PydanticCustomError("integer", "must be an integer")
        return int(value)
    return value


def _text(max_length: int) -> Any:
    def parse(value: Any) -> str | None:
        value = _blank_to_none(value)
        if value is None:
            return None
        if not isinstance(value, str):
            raise PydanticCustomError("string", "must be a string")
        if len(value) > max_length:
            raise PydanticCustomError(
                "too_long", "must be at most {max_length} characters", {"max_length": max_length}
            )
        return _check_text(value)

    return BeforeValidator(parse)


def parse_context(value: Any) -> str | None:
    """Pipe-separated segments, each trimmed, none empty: `contest|first_place|apis`."""
    value = _blank_to_none(value)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PydanticCustomError("string", "must be a string")
    segments = [segment.strip() for segment in value.split("|")]
    if any(not segment for segment in segments):
        raise PydanticCustomError("empty_segment", "must not contain empty segments")
    normalised = "|".join(segments)
    if len(normalised) > CONTEXT_MAX:
        raise PydanticCustomError(
            "too_long", "must be at most {max_length} characters", {"max_length": CONTEXT_MAX}
        )
    return _check_text(normalised)


INTEGER_SCHEMA = {
    "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^-?[0-9]+$"}, {"type": "null"}]
}


def _string_schema(max_length: int) -> WithJsonSchema:
    return WithJsonSchema({"type": ["string", "null"], "maxLength": max_length})


Integer = Annotated[int | None, BeforeValidator(parse_integer), WithJsonSchema(INTEGER_SCHEMA)]
Context = Annotated[
    str | None,
    BeforeValidator(parse_context),
    WithJsonSchema(
        {
            "type": ["string", "null"],
            "maxLength": CONTEXT_MAX,
            "description": "Pipe-separated segments, none empty: contest|first_place|apis",
        }
    ),
]
Comment = Annotated[str | None, _text(COMMENT_MAX), _string_schema(COMMENT_MAX)]
Username = Annotated[str | None, _text(USERNAME_MAX), _string_schema(USERNAME_MAX)]
# A search longer than the longest field it looks in could never match.
Search = Annotated[str | None, _text(COMMENT_MAX), _string_schema(COMMENT_MAX)]


class ScoreInput(BaseModel):
    """The body of POST /api/v2/score/ (seed 000, and seed 001's `user`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: Integer = None
    username: Username = None
    user: Integer = None
    score: Integer = None
    reputation_context: Context = None
    comment: Comment = None


@dataclass(frozen=True)
class UserRef:
    """Who an adjustment is for: an integer id or a username, as the client named it."""

    field: str
    user_id: int | None = None
    username: str | None = None


@dataclass(frozen=True)
class ScoreCommand:
    """A validated community adjustment, before the user is looked up."""

    user: UserRef
    amount: int
    reputation_context: str
    comment: str


def _pydantic_errors(error: ValidationError) -> list[FieldError]:
    return [
        FieldError(
            field=".".join(str(part) for part in item["loc"]) or "body",
            code=item["type"],
            message=item["msg"],
        )
        for item in error.errors()
    ]


def parse_input(model: type[Model], raw: Mapping[str, Any]) -> Model:
    """Validate `raw` with `model`; raise InvalidInput naming every bad field."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as error:
        raise InvalidInput(_pydantic_errors(error)) from None


def check_amount(field: str, amount: int | None, max_amount: int) -> list[FieldError]:
    if amount is None:
        return [FieldError(field, "required", "this field is required")]
    if amount == 0:
        return [FieldError(field, "zero", "must not be 0")]
    if abs(amount) > max_amount:
        return [
            FieldError(field, "out_of_range", f"must be between -{max_amount} and {max_amount}")
        ]
    return []


def _user_ref(data: ScoreInput) -> tuple[UserRef | None, list[FieldError]]:
    given = [name for name in ("user_id", "username", "user") if getattr(data, name) is not None]
    if not given:
        return None, [FieldError("user_id", "required", "give user_id or username")]
    if len(given) > 1:
        message = f"give only one of {', '.join(given)}"
        return None, [FieldError(name, "conflict", message) for name in given]
    name = given[0]
    if name == "username":
        return UserRef(field=name, username=data.username), []
    return UserRef(field=name, user_id=getattr(data, name)), []


def validate_score(raw: Mapping[str, Any], max_amount: int) -> ScoreCommand:
    """Validate a community score body; raise InvalidInput naming every bad field."""
    data = parse_input(ScoreInput, raw)
    user, errors = _user_ref(data)
    errors += check_amount("score", data.score, max_amount)
    if data.reputation_context is None and data.comment is None:
        errors.append(
            FieldError("reputation_context", "required", "give reputation_context or comment")
        )
    if errors or user is None or data.score is None:
        raise InvalidInput(errors)
    return ScoreCommand(
        user=user,
        amount=data.score,
        reputation_context=data.reputation_context or "",
        comment=data.comment or "",
    )


def validate_idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key header: 1 to 255 characters, visible ASCII, or absent."""
    if value is None:
        return None
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX or not value.isprintable() or not value.isascii():
        raise InvalidInput(
            [
                FieldError(
                    "Idempotency-Key",
                    "invalid",
                    f"must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters",
                )
            ]
        )
    return value


def parse_strict_flag(value: Any) -> bool:
    """A JSON boolean, or the strings `true`/`false`; absent is false."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise PydanticCustomError("boolean", "must be true or false")


def parse_expiry(value: Any) -> datetime | None:
    """An ISO 8601 date-time with an offset (or `Z`); naive ones are taken as UTC."""
    value = _blank_to_none(value)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PydanticCustomError("datetime", "must be an ISO 8601 date-time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("datetime", "must be an ISO 8601 date-time") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


ShortText = Annotated[str | None, _text(SHORT_TEXT_MAX), _string_schema(SHORT_TEXT_MAX)]
StrictFlag = Annotated[
    bool, BeforeValidator(parse_strict_flag), WithJsonSchema({"type": ["boolean", "string"]})
]
Expiry = Annotated[
    datetime | None,
    BeforeValidator(parse_expiry),
    WithJsonSchema({"type": ["string", "null"], "format": "date-time"}),
]


class AdjustPointsInput(BaseModel):
    """The body of POST /admin/points/{user_id}/adjust (seed 002's AdjustPointsRequest)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    amount: Integer = None
    reason: Comment = None
    points_type: ShortText = None
    idempotency_key: ShortText = None
    expires_at: Expiry = None
    source: ShortText = None
    related_id: ShortText = None
    allow_negative_balance: StrictFlag = False


def validate_points(raw: Mapping[str, Any], max_amount: int) -> AdjustPointsInput:
    """Validate a seed 002 adjustment body; raise InvalidInput naming every bad field."""
    data = parse_input(AdjustPointsInput, raw)
    errors = check_amount("amount", data.amount, max_amount)
    if errors:
        raise InvalidInput(errors)
    return data


class UserInput(BaseModel):
    """The body of POST /api/v2/users/ and one row of `tally users import`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    username: Username = None
    external_id: ShortText = None
    real_name: ShortText = None
    email: ShortText = None
    avatar: Annotated[str | None, _text(2000), _string_schema(2000)] = None
    description: Comment = None
    role: Annotated[
        str | None, _text(16), WithJsonSchema({"enum": ["user", "moderator", "admin", None]})
    ] = None


ROLES = ("user", "moderator", "admin")


def validate_user(raw: Mapping[str, Any]) -> UserInput:
    """Validate a new user; username is required and the role must be known."""
    data = parse_input(UserInput, raw)
    errors = []
    if data.username is None:
        errors.append(FieldError("username", "required", "this field is required"))
    if data.role is not None and data.role not in ROLES:
        errors.append(FieldError("role", "unknown", f"must be one of {', '.join(ROLES)}"))
    if errors:
        raise InvalidInput(errors)
    return data
