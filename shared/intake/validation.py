"""Validation of adjustment input: one pydantic model per input shape, errors named by field.

The fields themselves are parsed by `shared.fields` (one parser per kind of field);
this module composes them into the bodies tally accepts and states the rules that
span fields (exactly one user reference, a context or a comment, amount bounds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from shared.fields import (
    Avatar,
    Comment,
    Context,
    Email,
    Flag,
    IdempotencyKey,
    Integer,
    ItemKey,
    ShortText,
    Timestamp,
    Username,
    parse_key,
    text_parser,
)

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


class ScoreInput(BaseModel):
    """The body of POST /api/v2/score/ (the community API; `user` as older clients send it)."""

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


class BulkItemInput(ScoreInput):
    """One item of POST /api/v2/score/bulk: a score body, with its own key if it likes."""

    idempotency_key: ItemKey = None


def validate_score(raw: Mapping[str, Any], max_amount: int) -> ScoreCommand:
    """Validate a community score body; raise InvalidInput naming every bad field."""
    return score_command(parse_input(ScoreInput, raw), max_amount)


def score_command(data: ScoreInput, max_amount: int) -> ScoreCommand:
    """The rules across a parsed score body's fields; InvalidInput naming every bad field."""
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


def validate_idempotency_key(value: Any, field: str = "Idempotency-Key") -> str | None:
    """An idempotency key (header, body member, bulk item or query), or InvalidInput."""
    try:
        return parse_key(value)
    except PydanticCustomError as error:
        raise InvalidInput([FieldError(field, error.type, error.message())]) from None


class AdjustPointsInput(BaseModel):
    """The body of POST /admin/points/{user_id}/adjust (the points API's AdjustPointsRequest)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    amount: Integer = None
    reason: Comment = None
    points_type: ShortText = None
    idempotency_key: IdempotencyKey = None
    expires_at: Timestamp = None
    source: ShortText = None
    related_id: ShortText = None
    allow_negative_balance: Flag = False


def validate_points(raw: Mapping[str, Any], max_amount: int) -> AdjustPointsInput:
    """Validate a seed 002 adjustment body; raise InvalidInput naming every bad field.

    Only an earn expires (it becomes a lot): a spend's `expires_at` would be silently
    dropped, so it is refused. Whether the time is still to come is `check_future`'s
    question, asked when the adjustment is new (a retry after that time is a replay).
    """
    data = parse_input(AdjustPointsInput, raw)
    errors = check_amount("amount", data.amount, max_amount)
    if data.expires_at is not None and data.amount is not None and data.amount < 0:
        errors.append(FieldError("expires_at", "only_positive", "only positive adjustments expire"))
    if errors:
        raise InvalidInput(errors)
    return data


class HoldInput(BaseModel):
    """The body of POST /admin/points/{user_id}/holds: points to move into frozen_balance."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    amount: Integer = None
    points_type: ShortText = None
    # When the hold is released if still open; none: held until captured or released.
    expires_at: Timestamp = None
    reason: Comment = None
    idempotency_key: IdempotencyKey = None


class CaptureInput(BaseModel):
    """The body of POST /admin/points/{user_id}/holds/{id}/capture (amount: default all)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    amount: Integer = None
    reason: Comment = None
    idempotency_key: IdempotencyKey = None


class ReleaseInput(BaseModel):
    """The body of POST /admin/points/{user_id}/holds/{id}/release."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: Comment = None
    idempotency_key: IdempotencyKey = None


class ReverseInput(BaseModel):
    """The body of POST /admin/points/transactions/{id}/reverse."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: Comment = None
    # Admins only: the reversal may take the balance below zero on a type that forbids it.
    allow_negative_balance: Flag = False
    idempotency_key: IdempotencyKey = None


class ScoreReverseInput(BaseModel):
    """The body of POST /api/v2/score/{id}/reverse (optional, JSON or form)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    comment: Comment = None


class AccountStatusInput(BaseModel):
    """The body of POST /admin/points/{user_id}/freeze and /unfreeze (optional)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    points_type: ShortText = None
    reason: Comment = None


def positive_amount(field: str, amount: int | None, max_amount: int) -> list[FieldError]:
    """A hold's or a capture's amount: 1 to max_amount."""
    if amount is not None and amount <= 0:
        return [FieldError(field, "not_positive", "must be greater than 0")]
    return check_amount(field, amount, max_amount)


def validate_hold(raw: Mapping[str, Any], max_amount: int) -> HoldInput:
    """A hold's body: a positive amount (its timeout is checked by `check_future` when the
    hold is new: a retry of an accepted hold after its timeout is a replay)."""
    data = parse_input(HoldInput, raw)
    errors = positive_amount("amount", data.amount, max_amount)
    if errors:
        raise InvalidInput(errors)
    return data


def check_future(field: str, moment: datetime | None) -> None:
    """InvalidInput unless `moment` is None or still to come."""
    if moment is not None and moment <= datetime.now(UTC):
        raise InvalidInput([FieldError(field, "past", "must be in the future")])


def validate_capture(raw: Mapping[str, Any], max_amount: int) -> CaptureInput:
    """A capture's body: no amount (the whole hold) or a positive one."""
    data = parse_input(CaptureInput, raw)
    errors = [] if data.amount is None else positive_amount("amount", data.amount, max_amount)
    if errors:
        raise InvalidInput(errors)
    return data


class UserInput(BaseModel):
    """The body of POST /api/v2/users/ and one row of `tally users import`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    username: Username = None
    external_id: ShortText = None
    real_name: ShortText = None
    email: Email = None
    avatar: Avatar = None
    description: Comment = None
    role: Annotated[
        str | None, text_parser(16), WithJsonSchema({"enum": ["user", "moderator", "admin", None]})
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
    # The points routes take a user's external_id or integer id in one path segment: an
    # external_id of digits only could name another user's id.
    external_id = data.external_id
    if external_id is not None and external_id.isascii() and external_id.isdigit():
        message = "must not be digits only (that would read as a user's integer id)"
        errors.append(FieldError("external_id", "digits_only", message))
    if errors:
        raise InvalidInput(errors)
    return data
