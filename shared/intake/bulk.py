"""Bulk awards: validate a whole batch first, then store every item in one COPY.

Items arrive from the community CSV import or the JSON/NDJSON bulk route, are read
from the body one at a time as they are validated (shared.intake.bulk_bodies: a body is
never parsed whole, and reading stops at the item past the batch limit), have their
users looked up set-based, once, and are written as adjustment requests of one batch
in one transaction. A resubmitted batch (same key, same content) creates nothing new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import func, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.fields import BIGINT_MAX
from shared.intake.adjustments import Adjustment
from shared.intake.auth import Principal
from shared.intake.bulk_bodies import CSV_COLUMNS, BatchInvalid, ItemError
from shared.intake.idempotency import IdempotencyConflict
from shared.intake.validation import (
    BulkItemInput,
    FieldError,
    InvalidInput,
    ScoreInput,
    check_amount,
    parse_input,
    score_command,
)
from shared.models import Batch, new_ulid
from shared.platform.config import PointsType

# Array parameters (one bind each), so that 10,000 users are one short statement.
USERS_BY_ID_OR_NAME = text("""
    SELECT id, username FROM users WHERE tenant_id = :tenant AND id = ANY(:ids)
    UNION
    SELECT id, username FROM users WHERE tenant_id = :tenant AND username = ANY(:names)
""")
CREATE_ACCOUNTS = text("""
    INSERT INTO accounts (id, tenant_id, user_id, points_type, allow_negative, balance,
                          frozen_balance, expired_points, total_earned, total_spent,
                          exchange_rate, status, version)
    SELECT new.id, :tenant, new.user_id, :points_type, :allow_negative, 0, 0, 0, 0, 0,
           :exchange_rate, 'active', 0
    FROM unnest(CAST(:ids AS text[]), CAST(:users AS bigint[])) AS new(id, user_id)
    ON CONFLICT (user_id, points_type) DO NOTHING
""")
ACCOUNTS_OF = text("""
    SELECT user_id, id FROM accounts WHERE user_id = ANY(:users) AND points_type = :points_type
""")


REQUEST_COPY = """
    COPY adjustment_requests (tenant_id, idempotency_key, fingerprint, account_id, user_id,
                              amount, entry_type, reputation_context, comment, reason, source,
                              related_id, allow_negative, created_by, batch_id, status, attempts)
    FROM STDIN
"""


# Slotted: a batch holds 100,000 of them, and a __dict__ each was a tenth of its memory.
@dataclass(frozen=True, slots=True)
class Award:
    """One validated item; the user is resolved later, for the whole batch at once."""

    position: int
    user_id: int | None
    username: str | None
    amount: int
    context: str
    comment: str
    key: str | None = None


def validate_csv_row(number: int, row: Mapping[str, str], max_amount: int) -> Award:
    """One import row: variation_points, a context, and a username and/or user_id."""
    if "__columns__" in row:
        raise BatchInvalid(
            [ItemError(number, "row", "columns", f"expected {len(CSV_COLUMNS)} columns")]
        )
    data = {
        "user_id": row.get("user_id"),
        "username": row.get("username"),
        "score": row.get("variation_points"),
        "reputation_context": row.get("context"),
        "comment": row.get("comment"),
    }
    errors: list[FieldError] = []
    try:
        parsed = parse_input(ScoreInput, data)
    except InvalidInput as error:
        raise BatchInvalid([_csv_error(number, e) for e in error.errors]) from None
    if parsed.user_id is None and parsed.username is None:
        errors.append(FieldError("user_id", "required", "give username or user_id"))
    errors += check_amount("score", parsed.score, max_amount)
    if parsed.reputation_context is None:
        errors.append(FieldError("reputation_context", "required", "context is required"))
    if errors:
        raise BatchInvalid([_csv_error(number, e) for e in errors])
    return Award(
        number, parsed.user_id, parsed.username, parsed.score or 0,
        parsed.reputation_context or "", parsed.comment or "",
    )  # fmt: skip


CSV_NAMES = {"score": "variation_points", "reputation_context": "context"}


def _csv_error(number: int, error: FieldError) -> ItemError:
    return ItemError(number, CSV_NAMES.get(error.field, error.field), error.code, error.message)


def validate_bulk_item(
    index: int, item: Any, defaults: Mapping[str, Any], max_amount: int
) -> Award:
    """One bulk item, shaped like a single adjustment, with the batch's defaults."""
    if not isinstance(item, dict):
        raise BatchInvalid([ItemError(index, "item", "invalid_type", "must be an object")])
    merged = {key: value for key, value in defaults.items() if value is not None} | item
    try:
        parsed = parse_input(BulkItemInput, merged)
        command = score_command(parsed, max_amount)
    except InvalidInput as error:
        raise BatchInvalid(
            [ItemError(index, e.field, e.code, e.message) for e in error.errors]
        ) from None
    return Award(
        index, command.user.user_id, command.user.username, command.amount,
        command.reputation_context, command.comment, parsed.idempotency_key,
    )  # fmt: skip


def collect(items: Iterable[tuple[int, Any]], validate: Any) -> tuple[list[Award], list[ItemError]]:
    """Validate every item: the valid awards and the errors of the others."""
    valid: list[Award] = []
    errors: list[ItemError] = []
    for position, raw in items:
        try:
            valid.append(validate(position, raw))
        except BatchInvalid as bad:
            errors += bad.errors
    return valid, errors


@dataclass(frozen=True)
class Validated:
    """A batch that passed: its awards and each one's user id (by position)."""

    awards: list[Award]
    users: dict[int, int]


def validate_batch(
    session: Session, tenant_id: str, items: Iterable[tuple[int, Any]], validate: Any
) -> tuple[Validated, list[ItemError]]:
    """Every item's own checks, then one lookup of all their users; errors sorted by item."""
    awards, errors = collect(items, validate)
    users: dict[int, int] = {}
    try:
        users = resolve_users(session, tenant_id, awards)
    except BatchInvalid as bad:
        errors += bad.errors
    return Validated(awards, users), sorted(errors, key=lambda e: e.position)


def resolve_users(session: Session, tenant_id: str, awards: list[Award]) -> dict[int, int]:
    """Map each award's position to its user id; BatchInvalid for unknown or mismatched users."""
    ids = {a.user_id for a in awards if a.user_id is not None and 0 < a.user_id <= BIGINT_MAX}
    names = {a.username for a in awards if a.username is not None}
    by_id: dict[int, str] = {}
    by_name: dict[str, int] = {}
    params = {"tenant": tenant_id, "ids": sorted(ids), "names": sorted(names)}
    for user_id, username in session.execute(USERS_BY_ID_OR_NAME, params):
        by_id[user_id] = username
        by_name[username] = user_id
    resolved: dict[int, int] = {}
    errors: list[ItemError] = []
    for award in awards:
        found = by_name.get(award.username) if award.username else None
        if award.user_id is not None:
            if award.user_id not in by_id:
                errors.append(ItemError(award.position, "user_id", "not_found", "no such user"))
                continue
            if found is not None and found != award.user_id:
                message = "username and user_id name different users"
                errors.append(ItemError(award.position, "user_id", "mismatch", message))
                continue
            found = award.user_id
        if found is None:
            errors.append(ItemError(award.position, "username", "not_found", "no such user"))
            continue
        resolved[award.position] = found
    if errors:
        raise BatchInvalid(errors)
    return resolved


def batch_fingerprint(awards: list[Award]) -> str:
    """SHA-256 over every item as it was parsed, in order."""
    digest = hashlib.sha256()
    for a in awards:
        item = f"{a.position}\x1f{a.user_id}\x1f{a.username}\x1f{a.amount}\x1f{a.context}"
        digest.update(f"{item}\x1f{a.comment}\x1f{a.key}\x1e".encode())
    return digest.hexdigest()


def _accounts(
    session: Session, tenant_id: str, user_ids: set[int], points_type: PointsType
) -> dict[int, str]:
    """The account of each user for this points type, created set-based where missing."""
    users = sorted(user_ids)
    session.execute(
        CREATE_ACCOUNTS,
        {
            "ids": [new_ulid() for _ in users], "tenant": tenant_id, "users": users,
            "points_type": points_type.name, "allow_negative": points_type.allow_negative,
            "exchange_rate": points_type.exchange_rate,
        },
    )  # fmt: skip
    found = session.execute(ACCOUNTS_OF, {"users": users, "points_type": points_type.name})
    return {user_id: account_id for user_id, account_id in found}


@dataclass(frozen=True)
class Stored:
    batch_id: str
    created: bool
    account_ids: list[str]
    # Items created, and items found accepted already under their own keys.
    total: int
    replayed: int = 0


FIND_BATCH = text("""
    SELECT id, fingerprint, total, replayed FROM batches
    WHERE tenant_id = :tenant AND idempotency_key = :key
""")

ITEMS_BY_KEY = text("""
    SELECT idempotency_key, fingerprint, user_id FROM adjustment_requests
    WHERE tenant_id = :tenant AND idempotency_key = ANY(:keys)
""")


@dataclass(frozen=True)
class Plan:
    """What storing a batch would do: the items to create (with their keys) and how many of
    the items with keys of their own were accepted already (and are not created again)."""

    items: list[tuple[Award, str]]
    replayed: int


def plan_batch(
    session: Session, tenant_id: str, key: str, batch: Validated, points_type: PointsType
) -> Plan:
    """Check the items' keys; raise BatchInvalid for two items with one key, or for an item
    whose own key another request has with other content (so a rerun of an edited file
    creates only its new items)."""
    awards = batch.awards
    keys = item_keys(awards, key)
    duplicates = duplicate_keys(awards, keys)
    if duplicates:
        raise BatchInvalid(duplicates)
    own = [item_key for award, item_key in zip(awards, keys, strict=True) if award.key]
    found = {row.idempotency_key: row for row in session.execute(
        ITEMS_BY_KEY, {"tenant": tenant_id, "keys": own}
    )} if own else {}  # fmt: skip
    items: list[tuple[Award, str]] = []
    errors: list[ItemError] = []
    for award, item_key in zip(awards, keys, strict=True):
        row = found.get(item_key)
        user_id = batch.users[award.position]
        if row is None:
            items.append((award, item_key))
        elif (row.fingerprint, row.user_id) != (
            _adjustment(award, user_id, points_type).fingerprint(),
            user_id,
        ):
            message = "another request has this key, with other content"
            errors.append(ItemError(award.position, "idempotency_key", "in_use", message))
    if errors:
        raise BatchInvalid(errors)
    return Plan(items, len(awards) - len(items))


def preview_batch(
    session: Session, tenant_id: str, key: str, batch: Validated, points_type: PointsType
) -> Plan:
    """What `store_batch` would create and replay, writing nothing (a dry run): a batch
    sent before is replayed whole. Raises BatchInvalid as storing would."""
    if session.execute(FIND_BATCH, {"tenant": tenant_id, "key": key}).one_or_none():
        return Plan([], len(batch.awards))
    return plan_batch(session, tenant_id, key, batch, points_type)


def _adjustment(award: Award, user_id: int, points_type: PointsType) -> Adjustment:
    return Adjustment(
        user_id=user_id,
        points_type=points_type.name,
        amount=award.amount,
        reputation_context=award.context,
        comment=award.comment,
    )


def store_batch(
    session: Session,
    principal: Principal,
    key: str,
    batch: Validated,
    points_type: PointsType,
) -> Stored:
    """Write the batch and its new requests in the caller's transaction (or find it again)."""
    tenant = principal.tenant_id
    digest = batch_fingerprint(batch.awards)
    existing = session.execute(FIND_BATCH, {"tenant": tenant, "key": key}).one_or_none()
    if existing is None:
        plan = plan_batch(session, tenant, key, batch, points_type)
        total = len(plan.items)
        batch_id = session.scalar(
            insert(Batch)
            .values(
                id=new_ulid(), tenant_id=tenant, idempotency_key=key, fingerprint=digest,
                total=total, replayed=plan.replayed, created_by=principal.user_id,
                # Nothing to apply: final at once.
                completed_at=func.now() if total == 0 else None,
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
            .returning(Batch.id)
        )  # fmt: skip
        if batch_id is not None:
            return _store_items(session, principal, batch_id, batch, plan, points_type)
        existing = session.execute(FIND_BATCH, {"tenant": tenant, "key": key}).one()
    if existing.fingerprint != digest:
        raise IdempotencyConflict(key)
    return Stored(existing.id, False, [], existing.total, existing.replayed)


def _store_items(
    session: Session,
    principal: Principal,
    batch_id: str,
    batch: Validated,
    plan: Plan,
    points_type: PointsType,
) -> Stored:
    """COPY the new items of a new batch."""
    users = batch.users
    created = {users[award.position] for award, _ in plan.items}
    accounts = _accounts(session, principal.tenant_id, created, points_type)
    try:
        # A savepoint, so that a key in use leaves the transaction able to name it.
        with session.begin_nested():
            driver = session.connection().connection.driver_connection
            with driver.cursor() as cursor, cursor.copy(REQUEST_COPY) as copy:  # type: ignore[union-attr]
                for award, item_key in plan.items:
                    user_id = users[award.position]
                    copy.write_row((
                        principal.tenant_id, item_key,
                        _adjustment(award, user_id, points_type).fingerprint(),
                        accounts[user_id], user_id, award.amount, "adjust", award.context,
                        award.comment, "", "", "", False, principal.user_id, batch_id,
                        "queued", 0,
                    ))  # fmt: skip
    except psycopg.errors.UniqueViolation:
        awards = [award for award, _ in plan.items]
        keys = [item_key for _, item_key in plan.items]
        raise BatchInvalid(_keys_in_use(session, principal.tenant_id, awards, keys)) from None
    account_ids = sorted({accounts[user] for user in created})
    return Stored(batch_id, True, account_ids, len(plan.items), plan.replayed)


def item_keys(awards: list[Award], batch_key: str) -> list[str]:
    """Each item's idempotency key: its own, or the batch's key and its position."""
    return [award.key or f"{batch_key}:{award.position}" for award in awards]


def duplicate_keys(awards: list[Award], keys: list[str]) -> list[ItemError]:
    """Both items of every pair that would share one idempotency key."""
    first: dict[str, int] = {}
    errors: list[ItemError] = []
    for award, key in zip(awards, keys, strict=True):
        if key not in first:
            first[key] = award.position
            continue
        other = first[key]
        errors += [
            ItemError(one, "idempotency_key", "duplicate", f"item {two} has the same key")
            for one, two in ((other, award.position), (award.position, other))
        ]
    return sorted(errors, key=lambda e: e.position)


KEYS_IN_USE = text("""
    SELECT idempotency_key FROM adjustment_requests
    WHERE tenant_id = :tenant AND idempotency_key = ANY(:keys)
""")


def _keys_in_use(
    session: Session, tenant_id: str, awards: list[Award], keys: list[str]
) -> list[ItemError]:
    """The items whose key another request of the tenant already has."""
    used = set(session.scalars(KEYS_IN_USE, {"tenant": tenant_id, "keys": keys}))
    errors = [
        ItemError(award.position, "idempotency_key", "in_use",
                  "another request already has this idempotency key")
        for award, key in zip(awards, keys, strict=True) if key in used
    ]  # fmt: skip
    # A concurrent request that took a key and then rolled back leaves nothing to name.
    return errors or [ItemError(awards[0].position, "idempotency_key", "in_use",
                                "a concurrent request held one of these keys; retry")]  # fmt: skip
